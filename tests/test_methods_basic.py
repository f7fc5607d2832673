"""Golden tests of the four merge modes with calc `normal` (spec §3, §20.2, §20.5), and of the
elementwise contract (chunks through ctx.out equal whole-tensor results bit for bit)."""
import numpy as np
import pytest
import torch

from merger.methods import KeyContext, all_methods, get_method

SHAPES = [(37,), (9, 13), (6, 5, 3, 3)]


def rand(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[x == 0] = 0.5                                    # never zeros
    return x.to(dtype)


def abc(shape, dtype=torch.float32, seed=0):
    return rand(shape, seed, dtype), rand(shape, seed + 1, dtype), rand(shape, seed + 2, dtype)


def np64(t):
    return t.detach().to(torch.float64).numpy()


# independent float64 formulas (spec §3)
REF = {
    "weight_sum": lambda A, B, C, al, be: (1 - al) * A + al * B,
    "add_difference": lambda A, B, C, al, be: A + al * (B - C),
    "triple_sum": lambda A, B, C, al, be: (1 - al - be) * A + al * B + be * C,
    "sum_twice": lambda A, B, C, al, be: (1 - be) * ((1 - al) * A + al * B) + be * C,
}
RATIOS = [(0.3, 0.25), (-0.5, 0.4), (1.7, -0.3), (0.5, -0.5), (0.0, 0.7), (1.0, 0.0), (2.0, 1.5)]


def run(mode, a, b, c, al, be, out=None, calc="normal", key="model.diffusion_model.x.weight"):
    m = get_method(mode, calc)
    return m.fn(a, b, c, alpha=al, beta=be, gamma=0.3, ctx=KeyContext(key=key, out=out))


def close32(got, want):
    """float32 tolerance against a float64 reference."""
    scale = np.maximum(1.0, np.abs(want))
    assert np.all(np.abs(np64(got) - want) <= 2e-6 * scale * 4), np.max(np.abs(np64(got) - want))


@pytest.mark.parametrize("mode", list(REF))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("al,be", RATIOS)
def test_normal_modes_match_float64_formula(mode, shape, al, be):
    a, b, c = abc(shape)
    got = run(mode, a, b, c, al, be)
    assert got.shape == a.shape and got.dtype == torch.float32
    close32(got, REF[mode](np64(a), np64(b), np64(c), al, be))


@pytest.mark.parametrize("mode", list(REF))
def test_float64_compute_gives_float64(mode):
    a, b, c = abc((9, 13), torch.float64)
    got = run(mode, a, b, c, 0.37, 0.21)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), REF[mode](a.numpy(), b.numpy(), c.numpy(), 0.37, 0.21),
                               rtol=1e-12, atol=1e-12)


def test_weight_sum_endpoints_are_exact_copies():
    a, b, _ = abc((6, 5, 3, 3))
    r0, r1 = run("weight_sum", a, b, None, 0, 0), run("weight_sum", a, b, None, 1.0, 0)
    assert torch.equal(r0, a) and torch.equal(r1, b)
    assert r0.data_ptr() != a.data_ptr() and r1.data_ptr() != b.data_ptr()
    out = torch.empty_like(a)
    assert run("weight_sum", a, b, None, 0.0, 0, out=out) is out and torch.equal(out, a)
    # α = 0 / 1 ignore the other model entirely (SuperMerger returns the tensor untouched)
    bn = b.clone()
    bn[0] = float("nan")
    assert torch.equal(run("weight_sum", a, bn, None, 0.0, 0), a)


def test_add_difference_does_not_round_the_difference():
    # fp16-valued weights: B − C in fp16 would lose bits (spec §17.16); ours is exact in fp32
    a = rand((4096,), 5).half().float()
    b = (rand((4096,), 6) * 0.01 + 1).half().float()
    c = (rand((4096,), 7) * 0.003).half().float()
    got = run("add_difference", a, b, c, 0.7, 0)
    want = np64(a) + 0.7 * (np64(b) - np64(c))
    assert np.max(np.abs(np64(got) - want)) < 1e-6
    rounded = np64(a) + 0.7 * np64((b - c).half())
    assert np.max(np.abs(rounded - want)) > 1e-6        # the test would catch the old behaviour


def test_triple_sum_zero_sum_uses_explicit_formula():
    a, b, c = abc((9, 13))
    got = run("triple_sum", a, b, c, 0.4, -0.4)
    close32(got, np64(a) + 0.4 * np64(b) - 0.4 * np64(c))


@pytest.mark.parametrize("mode", list(REF))
def test_nan_propagates(mode):
    a, b, c = abc((9, 13))
    for t in (a, b, c) if mode != "weight_sum" else (a, b):
        x = [a.clone(), b.clone(), c.clone()]
        idx = [i for i, y in enumerate((a, b, c)) if y is t][0]
        x[idx][2, 3] = float("nan")
        got = run(mode, *x, 0.3, 0.2)
        assert torch.isnan(got[2, 3]) and int(torch.isnan(got).sum()) == 1


ELEMENTWISE = [m for m in all_methods() if m.elementwise]
ABC_METHODS = [m for m in all_methods() if m.multi is None]   # fn(a, b, c); multi-model: test_methods_multi


@pytest.mark.parametrize("method", ELEMENTWISE, ids=lambda m: f"{m.mode}-{m.calc}")
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("al,be", [(0.3, 0.2), (1.3, -0.4), (0.0, 0.5), (1.0, 0.0)])
def test_chunks_through_out_equal_whole_tensor(method, chunk, al, be):
    a, b, c = abc((6, 5, 3, 3), seed=11)
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    whole = method.fn(a, b, c, alpha=al, beta=be, gamma=0.3, ctx=KeyContext(key=key))
    fa, fb, fc = a.reshape(-1), b.reshape(-1), c.reshape(-1)
    dest = torch.full_like(fa, 123.0)
    buf = torch.empty(chunk)                       # a reused scratch buffer, as the engine does
    for i in range(0, fa.numel(), chunk):
        n = min(chunk, fa.numel() - i)
        out = buf[:n]
        r = method.fn(fa[i:i + n], fb[i:i + n], fc[i:i + n], alpha=al, beta=be, gamma=0.3,
                      ctx=KeyContext(key=key, out=out))
        assert r.data_ptr() == out.data_ptr()
        dest[i:i + n] = r
    assert torch.equal(dest.reshape(a.shape), whole)


@pytest.mark.parametrize("method", ABC_METHODS, ids=lambda m: f"{m.mode}-{m.calc}")
@pytest.mark.parametrize("shape", SHAPES)
def test_every_method_keeps_inputs_shape_dtype_and_honours_out(method, shape):
    a, b, c = abc(shape, seed=21)
    saved = [t.clone() for t in (a, b, c)]
    ctx = KeyContext(key="model.diffusion_model.middle_block.1.proj_in.weight")
    if method.prepass is not None:
        ctx.stats = method.finalize([method.prepass(a, b)])
    kw = dict(alpha=0.4, beta=0.3, gamma=1.5)
    got = method.fn(a, b, c, ctx=ctx, **kw)
    assert got.shape == a.shape and got.dtype == a.dtype
    out = torch.empty_like(a)
    ctx.out = out
    again = method.fn(a, b, c, ctx=ctx, **kw)
    assert again is out and torch.equal(again, got)
    for t, s in zip((a, b, c), saved):
        assert torch.equal(t, s)
    assert got.data_ptr() not in (a.data_ptr(), b.data_ptr(), c.data_ptr())
    g64 = method.fn(a.double(), b.double(), c.double(), ctx=KeyContext(key=ctx.key, stats=ctx.stats), **kw)
    assert g64.dtype == torch.float64


@pytest.mark.parametrize("method", ABC_METHODS, ids=lambda m: f"{m.mode}-{m.calc}")
def test_scalar_tensors(method):
    a, b, c = torch.tensor(1.5), torch.tensor(-2.0), torch.tensor(0.25)
    ctx = KeyContext(key="model.diffusion_model.s.weight")
    if method.prepass is not None:
        ctx.stats = method.finalize([torch.tensor([0.1, 0.9])])
    got = method.fn(a, b, c, alpha=0.4, beta=0.3, gamma=1.0, ctx=ctx)
    assert got.shape == () and got.dtype == torch.float32
    if not method.elementwise and method.calc != "smoothAdd":
        assert got.item() == 1.5                     # tensor/tensor2/cosine/extract keep A
    elif method.calc in ("normal", "smoothAdd"):
        ref = {"weight_sum": 0.6 * 1.5 + 0.4 * -2.0, "add_difference": 1.5 + 0.4 * (-2.25),
               "triple_sum": 0.3 * 1.5 + 0.4 * -2.0 + 0.3 * 0.25,
               "sum_twice": 0.7 * (0.6 * 1.5 + 0.4 * -2.0) + 0.3 * 0.25}[method.mode]
        assert abs(got.item() - ref) < 1e-6
