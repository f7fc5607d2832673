"""`Method.bound`: no input within the given magnitudes makes a kernel's float32 result larger
than its bound (with livegroups.SLACK for rounding), so a live re-merge may skip its check."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merger.livegroups import SLACK, proved
from merger.methods import KeyContext, all_methods, get_method

BOUNDED = [m for m in all_methods() if m.bound is not None]
KEY = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"   # scaled by `self`
RATIO = st.one_of(st.sampled_from([0.0, 1.0, 0.5, -0.5, 0.49999997, 2.0, -1.0]),
                  st.floats(-4.0, 4.0, allow_nan=False, width=32))


def test_the_linear_modes_and_self_have_bounds():
    assert sorted((m.mode, m.calc) for m in BOUNDED) == [
        ("add_difference", "normal"), ("sum_twice", "normal"), ("triple_sum", "normal"),
        ("weight_sum", "normal"), ("weight_sum", "self")]


def _inputs(seed: int, scales: tuple) -> dict:
    """fp16-valued float32 tensors of the given scales, mixing signs, extremes and near-ties."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for slot, scale in zip("abc", scales):
        x = torch.randn(4096, generator=g, dtype=torch.float64) * scale
        x[:8] = torch.tensor([scale, -scale, scale * 0.999, -scale * 1.001, 1e-3, -1e-3, 0.5, -0.5])
        out[slot] = x.clamp(-65504, 65504).half().float()
    return out


@pytest.mark.parametrize("method", BOUNDED, ids=lambda m: f"{m.mode}-{m.calc}")
@settings(max_examples=150, deadline=None)
@given(alpha=RATIO, beta=RATIO, seed=st.integers(0, 10**6),
       scales=st.tuples(*[st.sampled_from([1e-3, 0.7, 3.0, 1e3, 6e4])] * 3))
def test_no_result_exceeds_the_bound(method, alpha, beta, seed, scales):
    x = _inputs(seed, scales)
    res = method.fn(x["a"], x["b"], x["c"], alpha=alpha, beta=beta, gamma=0.0, ctx=KeyContext(key=KEY))
    mags = {s: float(v.abs().max()) for s, v in x.items()}
    bound = method.bound(alpha, beta, 0.0, mags)
    assert math.isfinite(bound)
    assert float(res.abs().max()) <= bound * SLACK


def test_the_lerp_bound_covers_both_of_torch_lerps_forms():
    """|α| ≥ 0.5 takes torch.lerp's b − (b − a)·(1 − α) form: its bound must hold there too."""
    m = get_method("weight_sum")
    a, b = torch.tensor([-1000.0, 1000.0]), torch.tensor([1000.0, -1000.0])
    for alpha in (-3.0, -0.5, 1.5, 3.0):                 # outside [0, 1]: opposite signs give the extreme
        res = m.fn(a, b, None, alpha=alpha, beta=0.0, gamma=0.0, ctx=KeyContext())
        assert float(res.abs().max()) <= m.bound(alpha, 0.0, 0.0, {"a": 1000.0, "b": 1000.0}) * SLACK
        assert float(res.abs().max()) == 1000.0 * (abs(1 - alpha) + abs(alpha))      # the exact extreme


def test_proved_needs_finite_inputs_and_room_in_the_output_dtype():
    ws, f16, f32 = get_method("weight_sum"), torch.float16, torch.float32
    assert proved(ws, 0.5, 0.0, 0.0, {"a": 3.0, "b": 2.0}, f16, f32)
    assert not proved(ws, 0.5, 0.0, 0.0, {"a": 3.0, "b": math.inf}, f16, f32)      # NaN/inf in B
    assert not proved(ws, 0.0, 0.0, 0.0, {"a": 3.0, "b": math.inf}, f16, f32)      # even where α = 0
    assert not proved(ws, 0.5, 0.0, 0.0, None, f16, f32)                            # magnitudes unknown
    assert not proved(ws, 1.8, 0.0, 0.0, {"a": 1.0, "b": 40000.0}, f16, f32)       # fp16 may overflow
    assert proved(ws, 1.8, 0.0, 0.0, {"a": 1.0, "b": 40000.0}, f32, f32)
    assert not proved(ws, 1e35, 0.0, 0.0, {"a": 1.0, "b": 65504.0}, f32, f32)      # float32 may overflow
    assert not proved(get_method("add_difference", "trainDifference"), 0.5, 0.0, 0.0,
                      {"a": 1.0, "b": 1.0, "c": 1.0}, f32, f32)                     # no bound: always checked
