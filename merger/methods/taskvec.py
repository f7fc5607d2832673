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

NaN in an input gives NaN in τ where it is kept (the engine refuses NaN results); an entry dropped by
a trim or mask does not reach the result.
"""
from __future__ import annotations

import torch

from .sparsify import breadcrumb, dare, trim


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


def elect(taus, weights) -> torch.Tensor:
    """γ = sign(Σ wᵢτᵢ) (−1, 0 or +1, in τ's dtype)."""
    return torch.sign(weighted_sum(taus, weights))


def disjoint_mean(taus, weights) -> torch.Tensor:
    """Elect γ, then τ = Σ wᵢmᵢτᵢ / Σ wᵢmᵢ with mᵢ = [τᵢ ≠ 0 and sign τᵢ = γ]; 0 where Σ wᵢmᵢ = 0."""
    gamma = elect(taus, weights)
    num = torch.zeros_like(gamma)
    den = torch.zeros_like(gamma)
    zero = torch.zeros((), dtype=gamma.dtype, device=gamma.device)
    for tau, w in zip(taus, weights):
        agree = (torch.sign(tau) * gamma) > 0
        num.add_(torch.where(agree, tau, zero), alpha=float(w))
        den.add_(agree.to(gamma.dtype), alpha=float(w))
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), zero)


def task_arithmetic(base, tuned, weights) -> torch.Tensor:
    """τ = Σ wᵢ(θᵢ − θ₀)."""
    return weighted_sum((task_vector(t, base) for t in tuned), weights)


def ties(base, tuned, weights, density: float) -> torch.Tensor:
    """TIES: trim each τᵢ to density d, elect signs, disjoint weighted mean."""
    return disjoint_mean([trim(task_vector(t, base), density) for t in tuned], weights)


def dare_linear(base, tuned, weights, density: float, seed: int, key: str) -> torch.Tensor:
    """DARE: τ = Σ wᵢ·mᵢτᵢ/d."""
    return weighted_sum((dare(task_vector(t, base), density, seed, i, key) for i, t in enumerate(tuned, 1)),
                        weights)


def dare_ties(base, tuned, weights, density: float, seed: int, key: str) -> torch.Tensor:
    """DARE-TIES: τ̃ᵢ = mᵢτᵢ/d, then elect signs and disjoint weighted mean (no trim)."""
    return disjoint_mean([dare(task_vector(t, base), density, seed, i, key) for i, t in enumerate(tuned, 1)],
                         weights)


def breadcrumbs(base, tuned, weights, density: float, outliers: float) -> torch.Tensor:
    """Model Breadcrumbs: τ = Σ wᵢ·breadcrumb(τᵢ, d, γ)."""
    return weighted_sum((breadcrumb(task_vector(t, base), density, outliers) for t in tuned), weights)


def apply_delta(base: torch.Tensor, tau: torch.Tensor, lam: float, out=None) -> torch.Tensor:
    """θ₀ + λ·τ in one fused pass (into `out` when given)."""
    if out is not None:
        return torch.add(base, tau.to(base.device), alpha=float(lam), out=out)
    return torch.add(base, tau.to(base.device), alpha=float(lam))
