"""The (mode, calc) registry: valid combinations, forced modes, ratio validation."""
import pytest

from merger.errors import AlloyError
from merger.methods import Method, all_methods, effective_mode, get_method, valid_calcs
from merger.multimodes import MULTI_MODES
from merger.recipe import CALCS, CLASSIC_MODES, MODES

VALID = {
    "weight_sum": {"normal", "cosineA", "cosineB", "tensor", "tensor2", "self"},
    "add_difference": {"normal", "trainDifference", "smoothAdd", "extract"},
    "triple_sum": {"normal"},
    "sum_twice": {"normal"},
    **{mode: {"normal"} for mode in MULTI_MODES},        # the multi-model modes: calc normal only
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("calc", CALCS)
def test_every_pair_is_either_a_method_or_a_clear_error(mode, calc):
    if calc in VALID[mode] and mode in MULTI_MODES:
        m = get_method(mode, calc)
        assert m.multi is not None and m.multi.spec.id == mode
        assert not (m.needs_c or m.uses_beta or m.uses_gamma or m.elementwise or m.heavy or m.prepass)
    elif calc in VALID[mode]:
        m = get_method(mode, calc)
        assert isinstance(m, Method) and (m.mode, m.calc) == (mode, calc) and m.multi is None
        assert m.needs_c == (mode != "weight_sum")
        assert m.uses_beta == (mode in ("triple_sum", "sum_twice") or calc in ("tensor", "tensor2", "extract"))
        assert m.uses_gamma == (calc == "extract")
        assert m.elementwise == (calc in ("normal", "trainDifference", "self"))
        assert (m.prepass is not None) == (m.finalize is not None) == m.skips_vae == calc.startswith("cosine")
    else:
        with pytest.raises(AlloyError) as e:
            get_method(mode, calc)
        msg = str(e.value)
        assert calc in msg and mode in msg
        assert all(m in msg for m in MODES if calc in VALID[m])


def test_valid_calcs_and_all_methods():
    for mode in MODES:
        assert set(valid_calcs(mode)) == VALID[mode]
        assert valid_calcs(mode)[0] == "normal"
    assert len(all_methods()) == sum(len(v) for v in VALID.values())


def test_spellings_are_normalised():
    assert get_method("Add difference", "smoothAdd MT").calc == "smoothAdd"
    assert get_method("Weight sum").calc == "normal"
    with pytest.raises(AlloyError):
        get_method("average", "normal")
    with pytest.raises(AlloyError):
        get_method("weight_sum", "plus random")


def test_effective_mode():
    for mode in MULTI_MODES:                                 # a multi-model mode is never replaced
        for calc in CALCS:
            assert effective_mode(calc, mode) == mode
    for mode in CLASSIC_MODES:
        assert effective_mode("trainDifference", mode) == "add_difference"
        assert effective_mode("extract", mode) == "add_difference"
        assert effective_mode("self", mode) == "weight_sum"
        assert effective_mode("normal", mode) == mode
        assert effective_mode("cosineA", mode) == mode      # get_method refuses the invalid ones
        assert effective_mode("smoothAdd", mode) == mode
    assert effective_mode("tensor2", "Triple sum") == "triple_sum"


def test_validate_ranges():
    ex = get_method("add_difference", "extract")
    ex.validate(0, 1, 0)
    ex.validate(1, 0, 20)
    for bad in ((-0.1, 0.5, 1), (1.1, 0.5, 1), (0.5, -0.01, 1), (0.5, 1.5, 1), (0.5, 0.5, -1)):
        with pytest.raises(AlloyError):
            ex.validate(*bad)
    ws = get_method("weight_sum", "normal")
    ws.validate(-1, 2, -1)                                   # extrapolation is allowed
    for bad in ((float("nan"), 0, 0), (0, float("inf"), 0), ("x", 0, 0)):
        with pytest.raises(AlloyError):
            ws.validate(*bad)
