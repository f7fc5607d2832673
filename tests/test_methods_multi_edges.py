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
