"""Built-in presets regenerate SuperMerger's published table; user preset files."""
from __future__ import annotations

import pytest

from merger.arch import FLUX, SD1, SD2, SDXL
from merger.errors import AlloyError
from merger.presets import BUILTIN, Presets, hermite, smoothstep, tri

# Expected values transcribed from SuperMerger's scripts/mbwpresets_master.txt (numbers only).
EXPECTED = {
    "GRAD_V": [0, 1, 0.9166666667, 0.8333333333, 0.75, 0.6666666667, 0.5833333333, 0.5, 0.4166666667,
               0.3333333333, 0.25, 0.1666666667, 0.0833333333, 0, 0.0833333333, 0.1666666667, 0.25, 0.3333333333,
               0.4166666667, 0.5, 0.5833333333, 0.6666666667, 0.75, 0.8333333333, 0.9166666667, 1.0],
    "RING08_SOFT": [0, 0, 0, 0, 0, 0, 0.5, 1, 1, 1, 0.5, 0, 0, 0, 0, 0, 0.5, 1, 1, 1, 0.5, 0, 0, 0, 0, 0],
    "RING10_3": [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    "WRAP14": [0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
    "SMOOTHSTEP*3": [0, 0, 0.0151909722222222, 0.0590277777777778, 0.12890625, 0.222222222222222,
                     0.336371527777778, 0.46875, 0.616753472222222, 0.777777777777778, 0.94921875, 0.871527777777778,
                     0.687065972222222, 0.5, 0.312934027777778, 0.128472222222222, 0.0507812500000004,
                     0.222222222222222, 0.383246527777778, 0.53125, 0.663628472222223, 0.777777777777778, 0.87109375,
                     0.940972222222222, 0.984809027777777, 1],
    "R_SMOOTHSTEP*4": [0, 1, 0.97974537037037, 0.921296296296296, 0.828125, 0.703703703703704, 0.55150462962963,
                       0.375, 0.177662037037037, 0.0370370370370372, 0.265625, 0.50462962962963, 0.750578703703704,
                       1., 0.750578703703704, 0.504629629629629, 0.265624999999999, 0.0370370370370372,
                       0.177662037037038, 0.375, 0.551504629629631, 0.703703703703703, 0.828125, 0.921296296296298,
                       0.979745370370369, 1],
    "SMOOTHSTEP/3": [0, 0, 0.04296875, 0.15625, 0.31640625, 0.5, 0.68359375, 0.84375, 0.95703125, 1., 0.95703125,
                     0.84375, 0.68359375, 0.5, 0.31640625, 0.15625, 0.04296875, 0., 0.04296875, 0.15625, 0.31640625,
                     0.5, 0.68359375, 0.84375, 0.95703125, 1],
    "REVERSE_COSINE": [0, 0, 0.00427756931309475, 0.0170370868554659, 0.0380602337443566, 0.0669872981077808,
                       0.103323329854383, 0.146446609406726, 0.19561928549564, 0.25, 0.308658283817455,
                       0.37059047744874, 0.434736903889974, 0.5, 0.565263096110026, 0.62940952255126,
                       0.691341716182545, 0.75, 0.804380714504361, 0.853553390593274, 0.896676670145618,
                       0.933012701892219, 0.961939766255643, 0.982962913144534, 0.995722430686905, 1],
    "TRUE_CUBIC_HERMITE": [0, 0, 0.199031876929012, 0.325761959876543, 0.424641927083333, 0.498456790123457,
                           0.549991560570988, 0.58203125, 0.597360869984568, 0.598765432098765, 0.589029947916667,
                           0.570939429012346, 0.547278886959876, 0.520833333333333, 0.49438777970679,
                           0.470727237654321, 0.45263671875, 0.442901234567901, 0.444305796682099,
                           0.459635416666667, 0.491675106095678, 0.543209876543211, 0.617024739583333,
                           0.715904706790124, 0.842634789737655, 1],
    "FAKE_REVERSE_CUBIC_HERMITE": [0, 1, 0.842423804012346, 0.71508487654321, 0.615234375, 0.540123456790123,
                                   0.487003279320988, 0.453125, 0.435739776234568, 0.432098765432099, 0.439453125,
                                   0.455054012345679, 0.476152584876543, 0.5, 0.523847415123457, 0.544945987654321,
                                   0.560546875, 0.567901234567901, 0.564260223765432, 0.546875, 0.512996720679013,
                                   0.459876543209876, 0.384765625, 0.28491512345679, 0.157576195987653, 0],
}

ALL_NAMES = ["GRAD_V", "GRAD_A", "FLAT_25", "FLAT_75", "WRAP08", "WRAP12", "WRAP14", "WRAP16", "MID12_50", "OUT07",
             "OUT12", "OUT12_5", "RING08_SOFT", "RING08_5", "RING10_5", "RING10_3", "SMOOTHSTEP",
             "REVERSE-SMOOTHSTEP", "SMOOTHSTEP*2", "R_SMOOTHSTEP*2", "SMOOTHSTEP*3", "R_SMOOTHSTEP*3",
             "SMOOTHSTEP*4", "R_SMOOTHSTEP*4", "SMOOTHSTEP/2", "R_SMOOTHSTEP/2", "SMOOTHSTEP/3", "R_SMOOTHSTEP/3",
             "SMOOTHSTEP/4", "R_SMOOTHSTEP/4", "COSINE", "REVERSE_COSINE", "TRUE_CUBIC_HERMITE",
             "TRUE_REVERSE_CUBIC_HERMITE", "FAKE_CUBIC_HERMITE", "FAKE_REVERSE_CUBIC_HERMITE", "ALL_A", "ALL_B"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_generated_presets_match_the_published_table(name):
    assert BUILTIN[name] == pytest.approx(EXPECTED[name], abs=1e-13)


def test_all_builtins_present_with_26_values_and_base_0():
    assert list(BUILTIN) == ALL_NAMES
    for name, values in BUILTIN.items():
        assert len(values) == 26
        assert values[0] == (1.0 if name == "ALL_B" else 0.0)
        assert all(-1e-12 <= v <= 1 + 1e-12 for v in values), name


def test_reverse_pairs_and_curve_helpers():
    for a, b in (("SMOOTHSTEP", "REVERSE-SMOOTHSTEP"), ("COSINE", "REVERSE_COSINE"), ("GRAD_V", "GRAD_A"),
                 ("SMOOTHSTEP*2", "R_SMOOTHSTEP*2"), ("SMOOTHSTEP/4", "R_SMOOTHSTEP/4"),
                 ("TRUE_CUBIC_HERMITE", "TRUE_REVERSE_CUBIC_HERMITE")):
        assert [x + y for x, y in zip(BUILTIN[a][1:], BUILTIN[b][1:])] == pytest.approx([1.0] * 25, abs=1e-9)
    assert smoothstep(0.5) == 0.5 and tri(3.25) == 0.75 and tri(2.0) == 0.0 and tri(1.0) == 1.0
    assert hermite(0.0, 0.2, 1.0, 5, 5) == 0.2 and hermite(1.0, 0.2, 1.0, 5, 5) == 1.0
    assert BUILTIN["SMOOTHSTEP/4"].index(1.0) == 7          # peaks at IN06 (and OUT05)
    assert BUILTIN["SMOOTHSTEP/4"][19] == 1.0


def test_names_and_get_per_arch():
    p = Presets()
    assert p.names(SD1) == ALL_NAMES == p.names(SDXL) == p.names(SD2)
    assert p.names(FLUX) == []
    assert p.get("GRAD_V", SD1) == list(BUILTIN["GRAD_V"])
    xl = p.get("GRAD_V", SDXL)
    assert len(xl) == 20 and xl[:10] == list(BUILTIN["GRAD_V"][:10]) and xl[10:] == list(BUILTIN["GRAD_V"][13:23])
    with pytest.raises(AlloyError, match="cannot be used on Flux"):
        p.get("GRAD_V", FLUX)


def test_lookup_and_close_matches():
    p = Presets()
    assert p.is_preset("GRAD_V") and p.is_preset(" grad_v ") and not p.is_preset("0.5,0.5")
    with pytest.raises(AlloyError, match="Unknown block-weight preset 'GRAD_X'.*GRAD_V"):
        p.get("GRAD_X", SD1)


def test_user_file(tmp_path):
    f = tmp_path / "presets.txt"
    flux61 = ",".join(["0.3"] * 61)
    f.write_text("preset_name\tpreset_weights\n# comment\n\n"
                 f"MINE\t{','.join(['0.1'] * 26)}\n"
                 f"XL20:{','.join(['0.2'] * 20)}\n"
                 f"FLX\t{flux61}\n"
                 f"GRAD_V\t{','.join(['1'] * 26)}\n"
                 f"EXT110\t{','.join(['0'] * 110)}\n"
                 f"ALL_R\t{','.join(['R'] * 26)}\n", encoding="utf-8")
    p = Presets(str(f))
    assert p.get("MINE", SD1) == [0.1] * 26 and p.get("MINE", SDXL) == [0.1] * 20
    assert "XL20" in p.names(SDXL) and "XL20" not in p.names(SD1)
    assert p.names(FLUX) == ["FLX"] and p.get("FLX", FLUX) == [0.3] * 61
    assert p.get("GRAD_V", SD1) == [1.0] * 26           # user entries override built-ins
    with pytest.raises(AlloyError, match="XL20.*SD1.x"):
        p.get("XL20", SD1)
    assert len(p.skipped) == 2 and "line 8" in p.skipped[0] and "random" in p.skipped[1]


@pytest.mark.parametrize("line, match", [
    ("BAD\t0.1,zz", r"line 2: preset BAD value 2 \('zz'\) is not a number"),
    ("no separator here", "line 2: expected"),
    ("\t0.1,0.2", "line 2: the preset has no valid name"),
    ("NANS\tnan," + ",".join(["0"] * 25), r"line 2: preset NANS value 1 \('nan'\) is not a finite number"),
])
def test_bad_user_lines_name_file_and_line(tmp_path, line, match):
    f = tmp_path / "p.txt"
    f.write_text("OK\t" + ",".join(["0"] * 26) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(AlloyError, match=match) as e:
        Presets(str(f))
    assert str(f) in str(e.value)


def test_missing_user_file():
    with pytest.raises(AlloyError, match="Cannot read preset file"):
        Presets("/nonexistent/presets.txt")
