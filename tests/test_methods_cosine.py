"""cosineA / cosineB: pre-pass + finalize + kernel on a small multi-key model against a numpy
float64 reference of spec §4.2 (with the §20.3 fix for all-zero tensors)."""
import numpy as np
import pytest
import torch

from merger.errors import AlloyError
from merger.methods import KeyContext, get_method

EPS = 1e-8
VAE = "first_stage_model.decoder.conv_in.weight"


def rand(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[x == 0] = 0.5
    return x


def model():
    """Two 'models' whose per-key similarity varies (B = A + noise of a key-dependent size)."""
    shapes = {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (12, 7),
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": (5, 4, 3, 3),
        "model.diffusion_model.out.2.bias": (11,),
        "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight": (6, 9),
        "model.diffusion_model.middle_block.0.emb_layers.1.weight": (3, 40),
        VAE: (4, 3, 3, 3),
    }
    A, B = {}, {}
    for i, (k, s) in enumerate(shapes.items()):
        A[k] = rand(s, 10 + i)
        B[k] = A[k] * (1 + 0.1 * i) + (0.2 + 0.5 * i) * rand(s, 50 + i)
    A["model.diffusion_model.zero.weight"] = torch.zeros(8, 3, dtype=torch.float64)
    B["model.diffusion_model.zero.weight"] = rand((8, 3), 99)
    return A, B


# ---- numpy reference (spec §4.2) --------------------------------------------------------------
def colcos(x, y):
    dot = np.sum(x * y, axis=0)
    nx, ny = np.sqrt(np.sum(x * x, axis=0)), np.sqrt(np.sum(y * y, axis=0))
    return dot / (np.maximum(nx, EPS) * np.maximum(ny, EPS))


def gcos(x, y):
    return np.sum(x * y) / (np.sqrt(np.sum(x * x)) * np.sqrt(np.sum(y * y)))


def N(x):
    return x / np.maximum(np.sqrt(np.sum(x * x, axis=0, keepdims=True)), 1e-12)


def reference(A, B, calc, alpha):
    with np.errstate(invalid="ignore", divide="ignore"):
        keys = [k for k in A if k != VAE]
        if calc == "cosineA":
            vals = [np.ravel(colcos(N(A[k]), N(B[k]))) for k in keys]
        else:
            vals = [np.ravel((colcos(A[k], B[k]) + gcos(A[k], B[k])) / 2) for k in keys]
        s = np.concatenate(vals)
        s = s[~np.isnan(s)]
        s = s[s >= np.percentile(s, 1, method="midpoint")]
        s = s[s <= np.percentile(s, 99, method="midpoint")]
        lo, hi = s.min(), s.max()
        out = {}
        for k in A:
            a, b = A[k], B[k]
            if k == VAE or not a.any() or not b.any():
                out[k] = a
                continue
            if calc == "cosineA":
                c = (colcos(N(a), N(b)) + gcos(N(a), N(b))) / 2
                kk = np.clip((c - lo) / (hi - lo) - abs(alpha), 0, 1)
            else:
                c = (colcos(a, b) + gcos(a, b)) / 2
                kk = np.clip((c - lo) / (hi - lo) - alpha, 0, 1)
            out[k] = kk * a + (1 - kk) * b
        return out, (lo, hi)


def pipeline(A, B, calc, alpha, dtype=torch.float32):
    """What the engine does: pre-pass over non-VAE keys, finalize, then the kernel per key."""
    m = get_method("weight_sum", calc)
    assert m.skips_vae and not m.elementwise
    A = {k: v.to(dtype) for k, v in A.items()}
    B = {k: v.to(dtype) for k, v in B.items()}
    stats = m.finalize([m.prepass(A[k], B[k]) for k in A if "first_stage_model" not in k])
    out = {}
    for k in A:
        if "first_stage_model" in k:
            out[k] = A[k]
            continue
        out[k] = m.fn(A[k], B[k], None, alpha=alpha, beta=0.0, gamma=0.0, ctx=KeyContext(key=k, stats=stats))
    return out, stats


@pytest.mark.parametrize("calc", ["cosineA", "cosineB"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, -0.3, 0.8])
def test_pipeline_matches_numpy_reference(calc, alpha):
    A, B = model()
    want, (lo, hi) = reference({k: v.numpy() for k, v in A.items()}, {k: v.numpy() for k, v in B.items()},
                               calc, alpha)
    got, stats = pipeline(A, B, calc, alpha)
    assert abs(stats.min - lo) < 1e-6 and abs(stats.max - hi) < 1e-6
    for k in A:
        assert got[k].dtype == torch.float32 and got[k].shape == A[k].shape
        assert not torch.isnan(got[k]).any(), k
        np.testing.assert_allclose(got[k].double().numpy(), want[k], rtol=2e-4, atol=2e-5, err_msg=k)
    got64, _ = pipeline(A, B, calc, alpha, torch.float64)
    for k in A:
        assert got64[k].dtype == torch.float64
        np.testing.assert_allclose(got64[k].numpy(), want[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_alpha_zero_is_not_a_and_large_alpha_is_b():
    A, B = model()
    k = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    got0, _ = pipeline(A, B, "cosineB", 0.0)
    assert not torch.equal(got0[k], A[k].float())
    for calc, alpha in (("cosineA", 5.0), ("cosineA", -5.0), ("cosineB", 5.0)):
        got, _ = pipeline(A, B, calc, alpha)
        assert torch.equal(got[k], B[k].float()), calc          # k = 0 → exactly B
    got, _ = pipeline(A, B, "cosineB", -5.0)
    assert torch.equal(got[k], A[k].float())                     # k = 1 → exactly A


def test_all_zero_tensor_keeps_a_instead_of_nan():
    m = get_method("weight_sum", "cosineB")
    stats = m.finalize([torch.tensor([0.1, 0.5, 0.9])])
    a, b = torch.zeros(4, 3), rand((4, 3), 1).float()
    for x, y in ((a, b), (b, a)):
        r = m.fn(x, y, None, alpha=0.3, beta=0, gamma=0, ctx=KeyContext(key="model.k", stats=stats))
        assert torch.equal(r, x) and r.data_ptr() != x.data_ptr()


def test_finalize_drops_nans_and_trims_percentiles():
    m = get_method("weight_sum", "cosineA")
    vals = np.linspace(-1, 1, 1001)
    st = m.finalize([torch.tensor(vals[:500]), torch.tensor([float("nan")]), torch.tensor(vals[500:])])
    s = vals[vals >= np.percentile(vals, 1, method="midpoint")]
    s = s[s <= np.percentile(s, 99, method="midpoint")]
    assert st.min == s.min() and st.max == s.max() and st.min > -1 and st.max < 1
    with pytest.raises(AlloyError):
        m.finalize([torch.tensor([float("nan")]), torch.empty(0)])


def test_equal_min_and_max_do_not_divide_by_zero():
    m = get_method("weight_sum", "cosineB")
    stats = m.finalize([torch.full((10,), 0.5)])
    assert stats.min == stats.max == 0.5
    a = rand((5, 4), 3).float()
    r = m.fn(a, a * 2, None, alpha=0.0, beta=0, gamma=0, ctx=KeyContext(key="model.k", stats=stats))
    assert torch.equal(r, a)                 # c ≈ 1 ≥ minS → similarity 1 → k = 1 → A
    r = m.fn(a, -a, None, alpha=0.0, beta=0, gamma=0, ctx=KeyContext(key="model.k", stats=stats))
    assert torch.equal(r, -a)                # c = −1 < minS → similarity 0 → k = 0 → B


def test_scalar_tensor_keeps_a_and_kernel_needs_stats():
    m = get_method("weight_sum", "cosineA")
    assert m.prepass(torch.tensor(2.0), torch.tensor(3.0)).numel() == 0
    r = m.fn(torch.tensor(2.0), torch.tensor(3.0), None, alpha=0.5, beta=0, gamma=0, ctx=KeyContext(key="model.s"))
    assert r.item() == 2.0
    with pytest.raises(ValueError):
        m.fn(torch.ones(3), torch.ones(3), None, alpha=0.5, beta=0, gamma=0, ctx=KeyContext(key="model.k"))
