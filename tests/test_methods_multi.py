"""Golden tests of the multi-model kernels against independent float64 implementations (numpy,
written from the papers' definitions in issue #10, not calling the kernels' helpers)."""
import math

import numpy as np
import pytest
import torch

from merger.methods import MultiParams, get_method
from merger.multimodes import MULTI_MODES

KEY = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
SHAPES = [(61,), (9, 13), (6, 5, 3, 3)]


def rand(shape, seed, scale=1.0):
    """Continuous values, never zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    x[x == 0] = 0.5
    return x.to(torch.float32)


def quantized(shape, seed, spread=64):
    """Multiples of 1/64 in [-8, 8): every difference and dyadic-weighted sum is exact in float32,
    so the float32 kernels and the float64 references see the same magnitudes and signs (and many
    ties in |τ|, which exercises the tie rule)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-8 * spread, 8 * spread, shape, generator=g).to(torch.float64) / spread).to(torch.float32)


def models(shape, n, seed=0, kind=rand):
    base = kind(shape, seed)
    return base, [base + kind(shape, seed + 1 + i) * 0.5 for i in range(n)]


def np64(t):
    return t.detach().to(torch.float64).numpy()


def run(mode, base, tuned, alpha=1.0, **kw):
    p = MultiParams(weights=tuple(kw.pop("weights", (1.0,) * len(tuned))), key=kw.pop("key", KEY), **kw)
    return get_method(mode).multi.run(base, tuned, alpha=alpha, params=p)


def close(got, want, rtol=2e-6):
    g = np64(got)
    scale = np.maximum(1.0, np.abs(want))
    err = np.max(np.abs(g - want) / scale) if g.size else 0.0
    assert err <= rtol, err


# ---- independent float64 references -------------------------------------------------------------
def ref_top(tau, k):
    """Mask of the k largest |τ|, equal magnitudes by lower flat index (stable sort)."""
    flat = tau.reshape(-1)
    order = np.argsort(-np.abs(flat), kind="stable")
    m = np.zeros(flat.size, bool)
    m[order[:max(0, min(k, flat.size))]] = True
    return m.reshape(tau.shape)


def ref_disjoint(taus, w):
    gamma = np.sign(sum(wi * t for wi, t in zip(w, taus)))
    agree = [(t != 0) & (np.sign(t) == gamma) for t in taus]
    num = sum(wi * np.where(a, t, 0.0) for wi, t, a in zip(w, taus, agree))
    den = sum(wi * a.astype(np.float64) for wi, a in zip(w, agree))
    return np.where(den != 0, num / np.where(den != 0, den, 1.0), 0.0)


def ref(mode, A, Ts, lam, w, d=0.5, g=0.01, masks=None):
    taus = [T - A for T in Ts]
    n = A.size
    if mode == "task_arithmetic":
        tau = sum(wi * t for wi, t in zip(w, taus))
    elif mode == "ties":
        k = math.ceil(d * n)
        tau = ref_disjoint([np.where(ref_top(t, k), t, 0.0) for t in taus], w)
    elif mode in ("dare_linear", "dare_ties"):
        dropped = [m * t / d for m, t in zip(masks, taus)]
        tau = sum(wi * t for wi, t in zip(w, dropped)) if mode == "dare_linear" else ref_disjoint(dropped, w)
    elif mode == "breadcrumbs":
        top, keep = math.ceil(g * n), math.ceil(d * n)
        tau = sum(wi * np.where(ref_top(t, top + keep) & ~ref_top(t, top), t, 0.0) for wi, t in zip(w, taus))
    elif mode == "model_stock":
        flat = [t.reshape(-1) for t in taus]
        cos = [flat[i] @ flat[j] / (np.linalg.norm(flat[i]) * np.linalg.norm(flat[j]))
               for i in range(len(flat)) for j in range(i + 1, len(flat))]
        c, k = np.mean(cos), len(taus)
        t = k * c / (1 + (k - 1) * c)
        return t * np.mean(Ts, axis=0) + (1 - t) * A if lam == 1 else A + lam * t * np.mean(taus, axis=0)
    else:
        raise AssertionError(mode)
    return A + lam * tau


def ref_weiszfeld(points, w, iters=200, ftol=1e-7, eps=1e-8):
    X = np.stack([p.reshape(-1) for p in points])
    w = np.asarray(w, np.float64)
    m = (w[:, None] * X).sum(0) / w.sum()
    f = (w * np.linalg.norm(X - m, axis=1)).sum()
    for _ in range(iters):
        beta = w / np.maximum(np.linalg.norm(X - m, axis=1), eps)
        m = (beta[:, None] * X).sum(0) / beta.sum()
        f_new = (w * np.linalg.norm(X - m, axis=1)).sum()
        if abs(f - f_new) <= ftol * f:
            break
        f = f_new
    return m.reshape(points[0].shape)


def ref_slerp(A, B, t):
    a, b = A.reshape(-1), B.reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0 or abs(a @ b / (na * nb)) > 0.9995:
        return (1 - t) * A + t * B
    om = np.arccos(np.clip(a @ b / (na * nb), -1, 1))
    return (np.sin((1 - t) * om) * A + np.sin(t * om) * B) / np.sin(om)


# ---- golden tests -----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("lam,w", [(1.0, None), (0.75, (0.5, 1.25, 1.0, 2.0, 0.25)), (-0.5, (1.5, -0.5, 1.0, 0.75, 1.0))])
@pytest.mark.parametrize("mode,d,g", [("task_arithmetic", 0.5, 0.0), ("ties", 0.3, 0.0), ("ties", 1.0, 0.0),
                                      ("breadcrumbs", 0.6, 0.05), ("breadcrumbs", 0.9, 0.0)])
def test_magnitude_modes_match_float64(mode, d, g, lam, w, n, shape):
    base, tuned = models(shape, n, seed=7 * n, kind=quantized)
    w = tuple(w[:n]) if w else (1.0,) * n
    got = run(mode, base, tuned, lam, weights=w, density=d, outliers=g)
    assert got.shape == base.shape and got.dtype == torch.float32
    close(got, ref(mode, np64(base), [np64(t) for t in tuned], lam, w, d, g))


@pytest.mark.parametrize("mode", ["dare_linear", "dare_ties"])
@pytest.mark.parametrize("d", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_dare_matches_float64_with_its_masks(mode, d, n):
    from merger.methods.sparsify import dare_mask
    base, tuned = models((17, 23), n, seed=3, kind=quantized)
    w = (0.5, 1.0, 2.0, 1.5, 0.25)[:n]
    got = run(mode, base, tuned, 0.8, weights=w, density=d, seed=42)
    masks = [dare_mask(base.shape, d, 42, i, KEY).numpy() for i in range(1, n + 1)]
    close(got, ref(mode, np64(base), [np64(t) for t in tuned], 0.8, w, d, masks=masks), rtol=4e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("lam", [1.0, 0.6])
def test_model_stock_matches_float64(shape, n, lam):
    base = rand(shape, 1)
    shared = rand(shape, 2) * 0.3                       # fine-tunes that share a direction (cos > 0)
    tuned = [base + shared + rand(shape, 10 + i) * 0.2 for i in range(n)]
    got = run("model_stock", base, tuned, lam)
    close(got, ref("model_stock", np64(base), [np64(t) for t in tuned], lam, None), rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,w", [(1, (1.0,)), (1, (3.0,)), (2, (1.0, 1.0)), (4, (1.0, 2.0, 0.5, 1.0)), (5, (1.0,) * 5)])
def test_geometric_median_matches_float64_weiszfeld(shape, n, w):
    base, tuned = models(shape, n, seed=5)
    got = run("geometric_median", base, tuned, 1.0, weights=w)
    pts = [np64(base)] + [np64(t) for t in tuned]
    want = ref_weiszfeld(pts, (1.0,) + w)
    close(got, want, rtol=1e-5)
    # and it is (close to) the minimiser: no better than the float64 reference by more than rounding
    obj = lambda m: sum(wi * np.linalg.norm((p - m).ravel()) for wi, p in zip((1.0,) + w, pts))  # noqa: E731
    assert obj(np64(got)) <= obj(want) * (1 + 1e-6)


def test_geometric_median_resists_one_outlier():
    base, tuned = models((40, 40), 4, seed=9)
    far = base + 1000.0
    got = run("geometric_median", base, tuned + [far], 1.0)
    mean_cluster = np.mean([np64(base)] + [np64(t) for t in tuned], axis=0)
    assert np.abs(np64(got) - mean_cluster).max() < 2.0       # the mean would move by ~167


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0, 1.4, -0.2])
def test_slerp_matches_float64(shape, t):
    a, b = rand(shape, 1), rand(shape, 2)
    got = run("slerp", a, [b], t)
    close(got, ref_slerp(np64(a), np64(b), t), rtol=4e-6)


def test_slerp_ends_are_the_models_exactly():
    a, b = rand((9, 13), 1), rand((9, 13), 2)
    assert torch.equal(run("slerp", a, [b], 0.0), a)
    assert torch.equal(run("slerp", a, [b], 1.0), b)


def test_slerp_falls_back_to_lerp_near_colinear_and_at_zero_norm():
    a = rand((9, 13), 1)
    for b in (a * 2.0, a + rand((9, 13), 2) * 1e-3, -a):    # |cos Ω| > 0.9995
        assert torch.equal(run("slerp", a, [b], 0.3), torch.lerp(a, b, 0.3))
    z = torch.zeros_like(a)
    assert torch.equal(run("slerp", z, [a], 0.3), torch.lerp(z, a, 0.3))
    assert torch.equal(run("slerp", a, [z], 0.3), torch.lerp(a, z, 0.3))
    # just below the threshold it is a true slerp, not a lerp
    b = a + rand((9, 13), 3) * 0.05
    cos = float(np.dot(np64(a).ravel(), np64(b).ravel()) / (np.linalg.norm(np64(a)) * np.linalg.norm(np64(b))))
    assert cos < 0.9995
    close(run("slerp", a, [b], 0.3), ref_slerp(np64(a), np64(b), 0.3), rtol=4e-6)


def test_fp16_inputs_and_float64_compute():
    base, tuned = models((9, 13), 3, seed=2, kind=quantized)
    for mode in MULTI_MODES:
        tu = tuned[:1] if mode == "slerp" else tuned
        got16 = run(mode, base, [t.half() for t in tu], 0.7)
        got = run(mode, base, tu, 0.7)
        assert got16.dtype == torch.float32 and torch.equal(got16, got), mode  # quantized values are fp16-exact
        got64 = run(mode, base.double(), [t.double() for t in tu], 0.7)
        assert got64.dtype == torch.float64
        close(got64, np64(got), rtol=5e-6)


@pytest.mark.parametrize("mode", list(MULTI_MODES))
def test_inputs_are_never_modified(mode):
    base, tuned = models((6, 5, 3, 3), 3, seed=4)
    tuned = tuned[:1] if mode == "slerp" else tuned
    saved = [t.clone() for t in [base, *tuned]]
    out = torch.full_like(base, float("nan"))
    res = get_method(mode).multi.run(base, tuned, alpha=0.5, params=MultiParams((1.0,) * len(tuned), key=KEY),
                                     out=out)
    assert res is out and not torch.isnan(out).any()
    assert all(torch.equal(x, y) for x, y in zip(saved, [base, *tuned]))
