"""Edge cases of the multi-model kernels: counts, the tie rule, DARE's masks (statistics and
reproducibility), equal models, zero task vectors, sign disagreement, degenerate model stock."""
import hashlib

import pytest
import torch

from merger.methods import MultiParams, get_method
from merger.methods.sparsify import dare_mask, kept_count, top_mask, trim
from merger.multimodes import MULTI_MODES
from tests.test_methods_multi import KEY, models, quantized, rand

TASK_MODES = [m for m in MULTI_MODES if m != "slerp"]


def run(mode, base, tuned, alpha=1.0, **kw):
    p = MultiParams(weights=tuple(kw.pop("weights", (1.0,) * len(tuned))), key=kw.pop("key", KEY), **kw)
    return get_method(mode).multi.run(base, tuned, alpha=alpha, params=p)


# ---- counts and ties -------------------------------------------------------------------------------
def test_counts_are_python_float_ceilings():
    assert 0.55 * 100 > 55 and kept_count(0.55, 100) == 56      # 55.00000000000001 → 56, as specified
    assert kept_count(0.3, 10) == 3 and kept_count(0.25, 10) == 3 and kept_count(1.0, 10) == 10
    assert kept_count(1e-9, 10) == 1 and kept_count(0.0, 10) == 0
    tau = torch.arange(1.0, 101.0)
    assert int((trim(tau, 0.55) != 0).sum()) == 56
    assert trim(tau[:10], 0.25).tolist() == [0.0] * 7 + [8.0, 9.0, 10.0]


def test_equal_magnitudes_are_taken_in_index_order():
    tau = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    assert top_mask(tau.abs(), 3).tolist() == [True, True, True] + [False] * 5
    tau = torch.tensor([[2.0, 5.0, -2.0], [1.0, 2.0, -3.0]])
    assert top_mask(tau.abs(), 2).tolist() == [[False, True, False], [False, False, True]]
    assert top_mask(tau.abs(), 3).tolist() == [[True, True, False], [False, False, True]]
    assert top_mask(tau.abs(), 4).tolist() == [[True, True, True], [False, False, True]]
    assert top_mask(tau.abs(), 5).tolist() == [[True, True, True], [False, True, True]]
    assert not top_mask(tau.abs(), 0).any() and top_mask(tau.abs(), 6).all()


def _top_mask_by_kthvalue(mag, k):
    """The rule of the module docstring, spelled out with torch.kthvalue and a stable sort."""
    flat = mag.reshape(-1)
    n = flat.numel()
    if k <= 0 or k >= n:
        return torch.full(mag.shape, k >= n)
    v = torch.kthvalue(flat, n - k + 1).values
    if float(v) == 0.0:
        return (flat >= 0).reshape(mag.shape)
    order = torch.sort(-flat.double(), stable=True).indices       # largest first, ties by index
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:k]] = True
    return mask.reshape(mag.shape)


@pytest.mark.parametrize("case", ["noise", "ties", "zeros", "inf", "tiny"])
def test_counting_selection_equals_kthvalue_on_large_tensors(case):
    """Float32 CPU tensors of ≥ 65,536 entries take the two counting passes instead of kthvalue:
    the same threshold, the same counts, the same mask (ties by index)."""
    from merger.methods.sparsify import RADIX_MIN, kth_largest
    g = torch.Generator().manual_seed(5)
    mag = torch.randn(300, 700, generator=g).abs()
    if case == "ties":
        mag = (mag * 4).round() / 4                     # few distinct values: huge tie sets
    elif case == "zeros":
        mag[mag < 1.0] = 0.0
    elif case == "inf":
        mag[::7, ::11] = float("inf")
    elif case == "tiny":
        mag = mag * 1e-42                               # subnormal values
    flat = mag.reshape(-1)
    n = flat.numel()
    assert n >= RADIX_MIN
    for k in (1, 2, 17, n // 10, n // 2, n - 1000, n - 1, 3001):
        v, above, equal = kth_largest(flat, k)
        assert float(v) == float(torch.kthvalue(flat, n - k + 1).values)
        assert above == int((flat > v).sum()) and equal == int((flat == v).sum()) and above < k <= above + equal
        assert torch.equal(top_mask(mag, k), _top_mask_by_kthvalue(mag, k)), (case, k)


def test_zero_ties_change_no_value():
    tau = torch.tensor([0.0, 3.0, 0.0, 0.0, -1.0, 0.0])
    assert trim(tau, 0.5).tolist() == [0.0, 3.0, 0.0, 0.0, -1.0, 0.0]


# ---- DARE -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("w", [(1.0, 1.0, 1.0), (0.3, -1.2, 2.5)])
def test_dare_density_one_is_task_arithmetic_exactly(w):
    base, tuned = models((33, 17), 3, seed=1)
    ta = run("task_arithmetic", base, tuned, 0.7, weights=w)
    assert torch.equal(run("dare_linear", base, tuned, 0.7, weights=w, density=1.0, seed=5), ta)
    ties = run("ties", base, tuned, 0.7, weights=w, density=1.0)
    assert torch.equal(run("dare_ties", base, tuned, 0.7, weights=w, density=1.0, seed=5), ties)


@pytest.mark.parametrize("d", [0.1, 0.35, 0.8])
def test_dare_keeps_a_fraction_d_and_rescales_the_mean(d):
    n = 400_000
    base = torch.zeros(n)
    tuned = [torch.full((n,), 1.0)]
    tau = run("dare_linear", base, tuned, 1.0, density=d, seed=11)
    kept = int((tau != 0).sum())
    sigma = (d * (1 - d) / n) ** 0.5
    assert abs(kept / n - d) < 5 * sigma
    assert torch.all((tau == 0) | (tau == torch.tensor(1.0) / torch.tensor(d)))   # survivors are τ/d
    assert abs(float(tau.double().mean()) - 1.0) < 5 * sigma / d                   # E[τ̃] = τ


def test_dare_masks_are_seeded_by_seed_model_and_key():
    m = dare_mask((1000,), 0.5, 7, 1, KEY)
    assert torch.equal(m, dare_mask((1000,), 0.5, 7, 1, KEY))
    for other in (dare_mask((1000,), 0.5, 8, 1, KEY), dare_mask((1000,), 0.5, 7, 2, KEY),
                  dare_mask((1000,), 0.5, 7, 1, KEY + "x")):
        overlap = float((m == other).float().mean())
        assert 0.4 < overlap < 0.6                                                 # independent draws
    # the documented derivation: sha256("alloy-dare:{seed}:{index}:{key}")[:8] → CPU mt19937, u < d
    h = int.from_bytes(hashlib.sha256(f"alloy-dare:7:1:{KEY}".encode()).digest()[:8], "little") & ((1 << 63) - 1)
    u = torch.rand((1000,), generator=torch.Generator().manual_seed(h))
    assert torch.equal(m, u < 0.5)
    # pinned: a change in the derivation (or in torch's CPU generator) would change every DARE recipe
    assert hashlib.sha256(m.numpy().tobytes()).hexdigest()[:16] == PINNED_MASK


PINNED_MASK = "2f465a75f46ae9b6"


def test_dare_same_seed_same_bytes_different_seed_different_result():
    base, tuned = models((64, 64), 3, seed=2)
    one = run("dare_ties", base, tuned, 1.0, density=0.4, seed=3)
    two = run("dare_ties", base.clone(), [t.clone() for t in tuned], 1.0, density=0.4, seed=3)
    assert one.numpy().tobytes() == two.numpy().tobytes()
    assert not torch.equal(one, run("dare_ties", base, tuned, 1.0, density=0.4, seed=4))
    assert not torch.equal(one, run("dare_ties", base, tuned, 1.0, density=0.4, seed=3, key="other"))


# ---- degenerate inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MULTI_MODES))
def test_all_models_equal_give_a_exactly(mode):
    base = rand((9, 13), 1)
    tuned = [base.clone()] if mode == "slerp" else [base.clone() for _ in range(4)]
    assert torch.equal(run(mode, base, tuned, 0.8, density=0.3, seed=1), base)


def test_equal_fine_tunes():
    base, x = rand((9, 13), 1), rand((9, 13), 2)
    tuned = [x.clone() for _ in range(3)]
    torch.testing.assert_close(run("task_arithmetic", base, tuned, 1 / 3), x)
    torch.testing.assert_close(run("ties", base, tuned, 1.0, density=1.0), x)
    torch.testing.assert_close(run("model_stock", base, tuned), x)                 # cos = 1 → t = 1
    torch.testing.assert_close(run("geometric_median", base, tuned), x, atol=1e-5, rtol=1e-5)


def test_zero_task_vectors():
    base, tuned = models((9, 13), 3, seed=3, kind=quantized)
    with_zero = tuned + [base.clone()]
    w = (1.0, 0.5, 2.0)
    assert torch.equal(run("task_arithmetic", base, with_zero, weights=w + (3.0,)),
                       run("task_arithmetic", base, tuned, weights=w))
    assert torch.equal(run("ties", base, with_zero, weights=w + (3.0,), density=0.4),
                       run("ties", base, tuned, weights=w, density=0.4))     # τ̂ = 0 never agrees
    assert torch.equal(run("model_stock", base, with_zero), base)          # cosine undefined → A
    assert torch.equal(run("model_stock", base, [base.clone(), base.clone()]), base)


def test_model_stock_opposite_task_vectors_keep_a():
    base, x = rand((9, 13), 1), rand((9, 13), 2)
    assert torch.equal(run("model_stock", base, [base + x, base - x]), base)      # 1 + (n−1)·c = 0


def test_one_model_disagreeing_in_sign_is_left_out_by_ties():
    base = quantized((40,), 1)
    up = torch.full((40,), 0.5)
    tuned = [base + up, base + 2 * up, base - 0.25 * up]
    got = run("ties", base, tuned, 1.0, weights=(1.0, 1.0, 1.0), density=1.0)
    assert torch.equal(got, base + 0.75)                                          # mean of +0.5 and +1.0
    got = run("ties", base, tuned, 1.0, weights=(1.0, 3.0, 1.0), density=1.0)
    assert torch.equal(got, base + (0.5 + 3.0) / 4)                               # weighted disjoint mean
    # a mass vote: one large negative outweighs two small positives
    tuned = [base + up, base + up, base - 4 * up]
    assert torch.equal(run("ties", base, tuned, 1.0, density=1.0), base - 2.0)
    # the agreeing weights cancel: 0 there, not a division by zero
    tuned = [base + up, base + up]
    assert torch.equal(run("ties", base, tuned, 1.0, weights=(1.0, -1.0), density=1.0), base)


def test_breadcrumbs_without_outliers_is_a_sum_of_ties_trims():
    base, tuned = models((11, 7), 3, seed=8, kind=quantized)
    w = (1.0, 0.5, 2.0)
    want = base + sum(wi * trim(t - base, 0.4) for wi, t in zip(w, tuned))
    assert torch.equal(run("breadcrumbs", base, tuned, 1.0, weights=w, density=0.4, outliers=0.0), want)


def test_breadcrumbs_drops_the_largest_entries():
    base = torch.zeros(100)
    tau = torch.arange(1.0, 101.0)
    got = run("breadcrumbs", base, [tau], 1.0, density=0.5, outliers=0.1)
    assert got[90:].eq(0).all() and got[40:90].equal(tau[40:90]) and got[:40].eq(0).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_input_is_never_trimmed_away(bad):
    """A corrupt fine-tune must make the merge fail (the engine refuses non-finite results), not
    vanish in a trim, an outlier cut or a sign election (torch.sign(NaN) is 0)."""
    base, tuned = models((5, 5), 2, seed=1)
    tuned[0] = tuned[0].clone()
    tuned[0][3, 4] = bad
    for mode in ("task_arithmetic", "ties", "breadcrumbs", "model_stock", "geometric_median"):
        got = run(mode, base, tuned, density=0.04, outliers=0.2)
        assert not torch.isfinite(got).all(), mode


def _trim_by_masked_fill(tau, density):
    from merger.methods.sparsify import _magnitude
    keep = _top_mask_by_kthvalue(_magnitude(tau), kept_count(density, tau.numel()))
    keep |= ~torch.isfinite(tau)
    return tau.clone().masked_fill_(~keep, 0)


def _disjoint_mean_by_masks(taus, weights):
    gamma = sum(t * w for t, w in zip(taus, weights))
    bad = ~torch.isfinite(gamma)
    gamma = gamma.sign()
    num, den = torch.zeros_like(gamma), torch.zeros_like(gamma)
    for tau, w in zip(taus, weights):
        agree = torch.sign(tau).mul_(gamma).gt_(0)
        num.addcmul_(tau, agree, value=float(w))
        den.add_(agree, alpha=float(w))
    none = den == 0
    num.div_(den.masked_fill_(none, 1.0)).masked_fill_(none, 0.0)
    return num.masked_fill_(bad, float("nan"))


def _bits(x):
    return x.contiguous().view(torch.int32)


@pytest.mark.parametrize("size", [40, 70_000])
def test_trim_and_disjoint_mean_keep_the_bits_of_the_masked_fill_rule(size):
    """trim_ multiplies by the mask and adds +0, disjoint_mean skips passes it does not need: the
    bits equal the plain masked_fill formulation, signed zeros, ties, NaN and inf included."""
    from merger.methods.sparsify import trim_
    from merger.methods.taskvec import disjoint_mean
    g = torch.Generator().manual_seed(11)
    tau = (torch.randn(size, generator=g) * 4).round() / 4      # many ties and ±0
    tau[::9] = -0.0
    for density in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert torch.equal(_bits(trim_(tau.clone(), density)), _bits(_trim_by_masked_fill(tau, density)))
    odd = tau.clone()
    odd[5], odd[17] = float("inf"), float("nan")
    for density in (0.0, 1e-9, 0.3):
        got, want = trim_(odd.clone(), density), _trim_by_masked_fill(odd, density)
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(_bits(got.nan_to_num(nan=7.0)), _bits(want.nan_to_num(nan=7.0)))
    taus = [trim_(((torch.randn(size, generator=g) * 2).round() / 2), 0.5) for _ in range(3)]
    for weights in ((1.0, 1.0, 1.0), (0.5, -0.5, 1.0), (1.0, -1.0, 0.25)):   # weights that cancel
        assert torch.equal(_bits(disjoint_mean(taus, weights)), _bits(_disjoint_mean_by_masks(taus, weights)))
    taus[1][3] = float("nan")
    got = disjoint_mean(taus, (1.0, 1.0, 1.0))
    assert got[3].isnan() and torch.equal(got.isnan(), _disjoint_mean_by_masks(taus, (1.0, 1.0, 1.0)).isnan())
