"""Random block weights: SuperMerger's draws for a seed, limits and clamps, recording in the recipe,
byte-identical re-runs, seed −1, and the errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from merger import dice
from merger.arch import get_arch
from merger.cli import main
from merger.errors import AlloyError
from merger.io import open_source
from merger.metadata import recipe_from_metadata
from merger.recipe import Recipe
from tests.fixtures import write_tiny

SD1, SDXL, FLUX = get_arch("sd1"), get_arch("sdxl"), get_arch("flux")
# np.random.seed(1234); np.random.rand(3000)[:26] rounded to 3 decimals (SuperMerger's "R" list).
R_1234 = [0.192, 0.622, 0.438, 0.785, 0.78, 0.273, 0.276, 0.802, 0.958, 0.876, 0.358, 0.501, 0.683,
          0.713, 0.37, 0.561, 0.503, 0.014, 0.773, 0.883, 0.365, 0.615, 0.075, 0.369, 0.933, 0.651]


def _sm_uniforms(seed):
    """SuperMerger's generator, spelled as it calls it: the global legacy NumPy state."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.rand(3000)
    finally:
        np.random.set_state(state)


def _floats(entries):
    return [float(x) for x in entries]


def test_r_list_is_supermergers_for_a_seed():
    assert _floats(dice.draw_list("R", SD1, 1234, "alpha")) == R_1234
    r = _sm_uniforms(77)
    assert _floats(dice.draw_list("R", SD1, 77, "alpha")) == [float(np.round(x, 3)) for x in r[:26]]
    assert _floats(dice.draw_list("R", SD1, 77, "beta")) == [float(np.round(x, 3)) for x in r[50:76]]
    assert _floats(dice.draw_list("ALL_R", SD1, 77, "alpha", {"round": 5})) == \
        [float(np.round(x, 5)) for x in r[:26]]


def test_u_x_d_formulas_and_clamp():
    r = _sm_uniforms(5)
    wide = {"max": "3", "min": "-3"}
    assert _floats(dice.draw_list("U", SD1, 5, "alpha", wide)) == [float(np.round(1.5 - 2 * x, 3)) for x in r[:26]]
    # SuperMerger's default clamp 0…1 applies to U too.
    assert _floats(dice.draw_list("U", SD1, 5, "alpha")) == \
        [float(np.round(min(max(1.5 - 2 * x, 0.0), 1.0), 3)) for x in r[:26]]
    up = ",".join(str(0.5 + i / 100) for i in range(26))
    x = _floats(dice.draw_list("X", SD1, 5, "alpha", {"upper": up, "lower": "0.1", **wide}))
    assert x == [float(np.round((0.1 - (0.5 + i / 100)) * r[i] + (0.5 + i / 100), 3)) for i in range(26)]
    d = _floats(dice.draw_list("D", SD1, 5, "alpha", {"upper": "0.5", "lower": "0.4", **wide}))
    assert d == [float(np.round(0.5 + 0.4 * (r[i] - 0.5), 3)) for i in range(26)]


def test_custom_pattern_keeps_numbers_and_positions():
    pattern = "U,0,0,0,0,0,0,0,0,0,0,0,0,R,R,R,R,R,R,R,R,R,R,R,R,R"
    r = _sm_uniforms(9)
    out = dice.draw_list(pattern, SD1, 9, "alpha")
    assert out[1:13] == ["0"] * 12
    assert float(out[0]) == float(np.round(min(max(1.5 - 2 * r[0], 0.0), 1.0), 3))
    assert _floats(out[13:]) == [float(np.round(x, 3)) for x in r[13:26]]


def test_probability_lower_limit_is_seeded():
    a = dice.draw_list("X", SD1, 11, "alpha", {"lower": "0.2R0.5", "upper": "0.9"})
    assert a == dice.draw_list("X", SD1, 11, "alpha", {"lower": "0.2R0.5", "upper": "0.9"})
    r = _sm_uniforms(11)
    for i, v in enumerate(_floats(a)):
        kept = r[2000 + i] <= 0.5
        assert v == (float(np.round((0.2 - 0.9) * r[i] + 0.9, 3)) if kept else 0.0)
    assert {v == 0.0 for v in _floats(a)} == {True, False}


def test_sdxl_uses_26_positions_then_20_flux_beta_does_not_overlap():
    r = _sm_uniforms(3)
    recipe = dice.roll(Recipe(model_a="a", model_b="b", alpha_blocks="R", seed=3), SDXL)
    from merger.weights import parse_block_list
    drawn = parse_block_list(recipe.alpha_blocks, SDXL)
    full = [float(np.round(x, 3)) for x in r[:26]]
    assert drawn == full[0:10] + full[13:23]
    beta = _floats(dice.draw_list("R", FLUX, 3, "beta"))
    assert len(beta) == 61 and beta == [float(np.round(x, 3)) for x in r[61:122]]


def test_roll_records_numbers_tokens_and_seed():
    base = Recipe(model_a="a", model_b="b", mode="sum_twice", model_c="c", alpha_blocks="R",
                  beta_blocks="0.1," * 25 + "U", seed=1234, dice={"round": 2})
    r = dice.roll(base, SD1)
    assert _floats(r.alpha_blocks.split(",")) == [float(np.round(x, 2)) for x in _sm_uniforms(1234)[:26]]
    assert r.dice == {"seed": 1234, "alpha": "R", "beta": base.beta_blocks, "upper": "1", "lower": "0",
                      "max": "1", "min": "0", "round": 2}
    assert r.beta_blocks.startswith("0.1,") and not dice.wanted(r)
    assert dice.roll(r, SD1) is r                                   # drawn lists are never re-drawn
    assert Recipe.from_json(r.to_json()) == r
    assert r.short_hash() == r.replace(dice=None).short_hash()       # the record does not change tensors
    plain = Recipe(model_a="a", model_b="b")
    assert "dice" not in plain.to_dict() and "dice" not in plain.identity()
    fresh = dice.roll(base.replace(seed=-1), SD1)
    assert 0 <= fresh.seed < dice.NEW_SEED_BELOW and fresh.dice["seed"] == fresh.seed


@pytest.mark.parametrize("changes,match", [
    ({"seed": 2 ** 32}, "between 0 and 4294967295"),
    ({"seed": -2}, "between 0"),
    ({"dice": {"upper": "1,2,3"}}, "upper limits have 3 values"),
    ({"dice": {"lower": "x"}}, "lower limit"),
    ({"dice": {"round": "two"}}, "round setting"),
])
def test_errors_are_sentences(changes, match):
    with pytest.raises(AlloyError, match=match):
        dice.roll(Recipe(model_a="a", model_b="b", alpha_blocks="X", **changes), SD1)


def test_cli_merge_records_and_run_reproduces_bytes(tmp_path, capsys):
    a = write_tiny(tmp_path / "a.safetensors", "sd1", seed=1)
    b = write_tiny(tmp_path / "b.safetensors", "sd1", seed=2)
    out, rec = tmp_path / "m.safetensors", tmp_path / "m.json"
    assert main(["merge", "--model-a", str(a), "--model-b", str(b), "--alpha-blocks", "U", "--seed", "-1",
                 "--dice-min", "-0.5", "--dice-max", "1.5", "--out", str(out), "--recipe-out", str(rec)]) == 0
    err = capsys.readouterr().err
    recipe = json.loads(rec.read_text())
    seed = recipe["seed"]
    assert seed >= 0 and f"random seed {seed}" in err and recipe["dice"]["alpha"] == "U"
    r = _sm_uniforms(seed)
    assert _floats(recipe["alpha_blocks"].split(",")) == [float(np.round(1.5 - 2 * x, 3)) for x in r[:26]]
    with open_source(str(out)) as src:
        assert recipe_from_metadata(src.metadata).alpha_blocks == recipe["alpha_blocks"]
    again = tmp_path / "again.safetensors"
    assert main(["run", str(rec), "--out", str(again), "--quiet"]) == 0
    assert again.read_bytes() == out.read_bytes()
    # The same seed and tokens draw the same numbers: the same bytes without a recipe file.
    third = tmp_path / "third.safetensors"
    assert main(["merge", "--model-a", str(a), "--model-b", str(b), "--alpha-blocks", "U", "--seed", str(seed),
                 "--dice-min", "-0.5", "--dice-max", "1.5", "--out", str(third), "--quiet"]) == 0
    assert third.read_bytes() == out.read_bytes()


def test_token_ranges_for_the_curve():
    values, ranges = dice.token_ranges("R,0.5,U,X,D" + ",0" * 21, SD1, {"upper": "0.8", "lower": "0.2"})
    assert values[:5] == [None, 0.5, None, None, None] and ranges[1] is None
    assert ranges[0] == (0.0, 1.0) and ranges[2] == (0.0, 1.0)       # U clamped to the default 0…1
    assert ranges[3] == (0.2, 0.8) and ranges[4] == pytest.approx((0.7, 0.9))
