"""Golden tests of trainDifference, smoothAdd, extract, tensor, tensor2 and self (spec §4.3–§4.7,
§20.4, §20.6, §20.8) against independent float64 formulas."""
import numpy as np
import pytest
import scipy.ndimage
import torch

from merger.methods import KeyContext, get_method

SHAPES = [(23,), (9, 13), (6, 5, 3, 3)]
KEY = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"


def rand(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[x == 0] = 0.5
    return x.to(dtype)


def abc(shape, dtype=torch.float32, seed=0):
    return rand(shape, seed, dtype), rand(shape, seed + 1, dtype), rand(shape, seed + 2, dtype)


def np64(t):
    return t.detach().to(torch.float64).numpy()


def call(mode, calc, a, b, c, alpha=0.5, beta=0.25, gamma=0.3, key=KEY, out=None):
    return get_method(mode, calc).fn(a, b, c, alpha=alpha, beta=beta, gamma=gamma,
                                     ctx=KeyContext(key=key, out=out))


# ---- trainDifference ---------------------------------------------------------------------------
def train_ref(A, B, C, al):
    num, den = np.abs(B - A), np.abs(B - C) + np.abs(B - A)
    frac = np.divide(num, den, out=np.zeros_like(num), where=den != 0)
    return A + 1.8 * al * (B - C) * frac


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, -0.7, 1.6])
def test_train_difference_matches_formula(shape, alpha):
    a, b, c = abc(shape)
    b.view(-1)[:3] = c.view(-1)[:3]                     # some B == C elements
    a.view(-1)[3:5] = b.view(-1)[3:5]                   # some A == B elements
    a.view(-1)[5] = b.view(-1)[5] = c.view(-1)[5]       # 0/0
    got = call("add_difference", "trainDifference", a, b, c, alpha)
    want = train_ref(np64(a), np64(b), np64(c), alpha)
    np.testing.assert_allclose(np64(got), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got.view(-1)[:6], a.view(-1)[:6])  # no update where B == C or A == B
    got64 = call("add_difference", "trainDifference", a.double(), b.double(), c.double(), alpha)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), want, rtol=1e-12, atol=1e-12)


def test_train_difference_b_equals_c_keeps_a_and_nan_propagates():
    a, b, _ = abc((9, 13))
    assert torch.equal(call("add_difference", "trainDifference", a, b, b.clone(), 0.8), a)
    for i in range(3):
        x = list(abc((9, 13)))
        x[i][1, 2] = float("nan")
        got = call("add_difference", "trainDifference", *x, 0.8)
        assert torch.isnan(got[1, 2]) and int(torch.isnan(got).sum()) == 1


# ---- smoothAdd ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smooth_add_matches_scipy_by_hand(shape, dtype):
    a, b, c = abc(shape, dtype)
    got = call("add_difference", "smoothAdd", a, b, c, 1.5)
    assert got.dtype == dtype and got.shape == a.shape
    d = scipy.ndimage.median_filter(np64(b) - np64(c), size=3, mode="reflect")
    d = scipy.ndimage.gaussian_filter(d, sigma=1, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(np64(got), np64(a) + 1.5 * d, rtol=1e-5, atol=2e-6)


def test_smooth_add_really_smooths():
    a = torch.zeros(9, 9)
    b = torch.zeros(9, 9)
    b[4, 4] = 1.0                                   # an isolated spike is removed by the median
    got = call("add_difference", "smoothAdd", a, b, torch.zeros(9, 9), 1.0)
    assert torch.equal(got, a)


# ---- extract --------------------------------------------------------------------------------------
def extract_ref(A, B, C, al, be, ga):
    x, y = B - A, C - A
    cos = np.sum(x * y, -1) / (np.maximum(np.linalg.norm(x, axis=-1), 1e-8)
                               * np.maximum(np.linalg.norm(y, axis=-1), 1e-8))
    d = ((np.clip(cos, -1, 1)[..., None] + 1) / 2) ** ga
    return A + ((1 - al) * x + al * y) * ((1 - be) * d + be * (1 - d))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("al,be,ga", [(0.0, 0.0, 0.3), (0.3, 0.7, 2.0), (1.0, 1.0, 0.0), (0.5, 0.5, 7.5)])
def test_extract_matches_formula(shape, al, be, ga):
    a, b, c = abc(shape)
    got = call("add_difference", "extract", a, b, c, al, be, ga)
    np.testing.assert_allclose(np64(got), extract_ref(np64(a), np64(b), np64(c), al, be, ga),
                               rtol=2e-5, atol=2e-5)


def test_extract_alpha0_beta_half_gamma0_is_half_of_b_minus_a():
    a, b, c = abc((9, 13), torch.float64)
    got = call("add_difference", "extract", a, b, c, 0.0, 0.5, 0.0)
    np.testing.assert_allclose(got.numpy(), (a + (b - a) / 2).numpy(), rtol=1e-12, atol=1e-12)


# ---- tensor / tensor2 -----------------------------------------------------------------------------
def tensor_ref(A, B, axis, n, al, be):
    """Index-by-index: which slices along `axis` come from B (Python int() and slice semantics)."""
    if al + be <= 1:
        start, end, inside, outside = int(n * be), int(n * (al + be)), B, A
    else:
        start, end, inside, outside = int(n * (al + be - 1)), int(n * be), A, B
    picked = set(range(A.shape[axis])[start:end])
    out = outside.copy()
    for i in range(A.shape[axis]):
        if i in picked:
            idx = [slice(None)] * A.ndim
            idx[axis] = i
            out[tuple(idx)] = inside[tuple(idx)]
    return out


RATIOS_T = [(0.3, 0.2), (0.5, 0.0), (0.6, 0.7), (1.0, 0.5), (0.25, -0.3), (0.0, 0.4)]


@pytest.mark.parametrize("shape", [(23,), (10, 6), (8, 5, 3, 3)])
@pytest.mark.parametrize("al,be", RATIOS_T)
def test_tensor_swaps_dim0_window(shape, al, be):
    a, b, _ = abc(shape)
    got = call("weight_sum", "tensor", a, b, None, al, be)
    np.testing.assert_array_equal(got.numpy(), tensor_ref(a.numpy(), b.numpy(), 0, shape[0], al, be))


@pytest.mark.parametrize("shape,axis,n", [
    ((23,), 0, 23),
    ((4, 120), 1, 120),          # dim 1 > 100: sliced on dim 1 with its own length
    ((3, 101, 3, 3), 1, 101),
    ((40, 10), 1, 40),           # dim 1 ≤ 100: window from dim 0's length, applied to dim 1 (quirk)
    ((6, 8, 3, 3), 1, 6),
])
@pytest.mark.parametrize("al,be", RATIOS_T)
def test_tensor2_swaps_dim1_window_with_quirk(shape, axis, n, al, be):
    a, b, _ = abc(shape)
    got = call("weight_sum", "tensor2", a, b, None, al, be)
    np.testing.assert_array_equal(got.numpy(), tensor_ref(a.numpy(), b.numpy(), axis, n, al, be))


def test_tensor2_quirk_small_dim1():
    a, b, _ = abc((40, 10))
    # window [int(40·0.5), int(40·0.8)) = [20, 32) on a dim of 10 → empty → A
    assert torch.equal(call("weight_sum", "tensor2", a, b, None, 0.3, 0.5), a)
    # α + β > 1: B except [int(40·0.1), int(40·0.6)) = [4, 24) → slices 4..9 from A
    got = call("weight_sum", "tensor2", a, b, None, 0.5, 0.6)
    assert torch.equal(got[:, :4], b[:, :4]) and torch.equal(got[:, 4:], a[:, 4:])


def test_tensor_modes_keep_scalars_and_nan_is_copied():
    for calc in ("tensor", "tensor2"):
        r = call("weight_sum", calc, torch.tensor(1.0), torch.tensor(2.0), None, 0.5, 0.2)
        assert r.item() == 1.0
    a, b, _ = abc((10,))
    b[3] = float("nan")
    got = call("weight_sum", "tensor", a, b, None, 0.3, 0.2)      # slices 2..4 from B
    assert torch.isnan(got[3]) and int(torch.isnan(got).sum()) == 1


# ---- self -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.8, -1.2, 1.5])
def test_self_scales_a_except_listed_keys(shape, alpha):
    a, b, _ = abc(shape)
    got = call("weight_sum", "self", a, b, None, alpha)
    want = np64(a) if alpha == 0 else alpha * np64(a)
    np.testing.assert_allclose(np64(got), want, rtol=1e-6, atol=1e-7)
    for key in ("model.diffusion_model.input_blocks.1.1.proj_out.weight",
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight",
                "model.diffusion_model.input_blocks.1.1.norm.weight"):
        r = call("weight_sum", "self", a, b, None, alpha, key=key)
        assert torch.equal(r, a) and r.data_ptr() != a.data_ptr()
    # GroupNorms named in_layers.0 / out.0 are scaled (spec §20.6)
    r = call("weight_sum", "self", a, None, None, 2.0, key="model.diffusion_model.out.0.weight")
    assert torch.equal(r, a * 2)


def test_train_difference_is_bitwise_supermerger_order_in_float32():
    # spec §4.3 as SuperMerger evaluates it: scale = |B−A|/(|B−C|+|B−A|) (0 where the sum is 0),
    # sign(D)·|scale|·|D|, times (α·1.8), plus A — all float32
    a, b, c = abc((6, 5, 3, 3), seed=40)
    b.view(-1)[:4] = c.view(-1)[:4]
    s = (b - c).abs() + (b - a).abs()
    scale = torch.where(s != 0, (b - a).abs() / s, torch.tensor(0.0))
    want = a + (torch.sign(b - c) * scale.abs() * (b - c).abs()) * (0.65 * 1.8)
    assert torch.equal(call("add_difference", "trainDifference", a, b, c, 0.65), want)
