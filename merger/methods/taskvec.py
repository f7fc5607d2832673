"""Task-vector merges (ecosystem §2.5): the λ-independent merged task vector τ of one tensor.

Inputs: θ₀ = ``base`` (compute dtype: float32, or float64 for verification) and the fine-tunes
θ₁…θₙ = ``tuned`` (any float dtype, on base's device; never modified). τᵢ = θᵢ − θ₀ is formed in the
compute dtype by type promotion, one model at a time where the method allows. Weights wᵢ: one per
fine-tune. Every function returns a new tensor τ of base's shape and dtype; the merge result is
θ₀ + λ·τ (`apply_delta`), so a λ sweep re-uses τ.

* task_arithmetic: τ = Σ wᵢτᵢ.
* ties (Yadav et al. 2023): τ̂ᵢ = trim(τᵢ, d) (⌈d·n⌉ entries of largest |τᵢ|, see `sparsify`);
  γ = sign(Σ wᵢτ̂ᵢ); mᵢ = [τ̂ᵢ ≠ 0 and sign τ̂ᵢ = γ]; τ = Σ wᵢmᵢτ̂ᵢ / Σ wᵢmᵢ, 0 where Σ wᵢmᵢ = 0
  (no model agrees, or the agreeing weights cancel).
* dare_linear (Yu et al. 2023): τ̃ᵢ = mᵢτᵢ/d, mᵢ ~ Bernoulli(d) from the seeded generator of
  (seed, i, key), i = 1 for B … 5 for F; τ = Σ wᵢτ̃ᵢ.  dare_ties: τ̃ᵢ, then elect and disjoint mean.
* breadcrumbs (Davari & Belilovsky 2023): τ̂ᵢ drops the ⌈γ·n⌉ largest |τᵢ| and keeps the next ⌈d·n⌉;
  τ = Σ wᵢτ̂ᵢ.

NaN in an input gives NaN in the result where it is kept (the engine refuses NaN results): trims
rank NaN first, and the elected sign of a NaN position is NaN. Only a DARE mask can drop an entry
before it is looked at.
"""
from __future__ import annotations

import math

import torch

from .sparsify import breadcrumb_, dare_, trim_


def task_vector(theta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """τ = θ − θ₀ in base's (compute) dtype."""
    return torch.sub(theta.to(base.device), base)


def weighted_sum(taus, weights) -> torch.Tensor:
    """Σ wᵢ·τᵢ, accumulated left to right into a new tensor (taus may be a generator)."""
    acc = None
    for tau, w in zip(taus, weights):
        if acc is None:
            acc = torch.mul(tau, float(w))
        else:
            acc.add_(tau, alpha=float(w))
    return acc


def disjoint_mean(taus, weights) -> torch.Tensor:
    """Elect γ = sign(Σ wᵢτᵢ), then τ = Σ wᵢmᵢτᵢ / Σ wᵢmᵢ with mᵢ = [τᵢ ≠ 0 and sign τᵢ = γ];
    0 where Σ wᵢmᵢ = 0; NaN where Σ wᵢτᵢ is not finite."""
    gamma = weighted_sum(taus, weights)
    # A finite sum of γ has no NaN/inf terms: the isfinite pass (slow on the CPU) only when it is not.
    bad = None if math.isfinite(float(gamma.sum())) else ~torch.isfinite(gamma)
    gamma.sign_()
    num = torch.zeros_like(gamma)
    den = torch.zeros_like(gamma)
    for tau, w in zip(taus, weights):
        agree = torch.sign(tau).mul_(gamma).gt_(0)          # mᵢ as 1.0 / 0.0
        num.addcmul_(tau, agree, value=float(w))
        den.add_(agree, alpha=float(w))
    del gamma, agree
    none = den == 0
    num.div_(den.add_(none)).masked_fill_(none, 0.0)      # den + 1 where it is 0 (never −0: sums from +0)
    return num if bad is None else num.masked_fill_(bad, float("nan"))


def task_arithmetic(base, tuned, weights) -> torch.Tensor:
    """τ = Σ wᵢ(θᵢ − θ₀)."""
    return weighted_sum((task_vector(t, base) for t in tuned), weights)


def ties(base, tuned, weights, density: float) -> torch.Tensor:
    """TIES: trim each τᵢ to density d, elect signs, disjoint weighted mean."""
    return disjoint_mean([trim_(task_vector(t, base), density) for t in tuned], weights)


def dare_linear(base, tuned, weights, density: float, seed: int, key: str) -> torch.Tensor:
    """DARE: τ = Σ wᵢ·mᵢτᵢ/d."""
    return weighted_sum((dare_(task_vector(t, base), density, seed, i, key) for i, t in enumerate(tuned, 1)),
                        weights)


def dare_ties(base, tuned, weights, density: float, seed: int, key: str) -> torch.Tensor:
    """DARE-TIES: τ̃ᵢ = mᵢτᵢ/d, then elect signs and disjoint weighted mean (no trim)."""
    return disjoint_mean([dare_(task_vector(t, base), density, seed, i, key) for i, t in enumerate(tuned, 1)],
                         weights)


def breadcrumbs(base, tuned, weights, density: float, outliers: float) -> torch.Tensor:
    """Model Breadcrumbs: τ = Σ wᵢ·breadcrumb(τᵢ, d, γ)."""
    return weighted_sum((breadcrumb_(task_vector(t, base), density, outliers) for t in tuned), weights)


def apply_delta(base: torch.Tensor, tau: torch.Tensor, lam: float, out=None) -> torch.Tensor:
    """θ₀ + λ·τ in one fused pass (into `out` when given)."""
    if out is not None:
        return torch.add(base, tau.to(base.device), alpha=float(lam), out=out)
    return torch.add(base, tau.to(base.device), alpha=float(lam))
