"""Merges decided by the geometry of the task vectors: model stock and the geometric median.

Both need only inner products of the task vectors τᵢ = θᵢ − θ₀ (i = 1…n, θ₀ = ``base``), so they
first form the Gram matrix Gᵢⱼ = ⟨τᵢ, τⱼ⟩ of the flattened tensors (`gram_of_differences`:
chunk by chunk, products summed in float64, without holding the τᵢ), then the merged task vector
τ = Σ cᵢτᵢ in one pass (`combine_differences`). The result is θ₀ + λ·τ (λ = 1: the papers' result).

* model_stock (Jang et al. 2024), n ≥ 2: c̄ = mean of cos(τᵢ, τⱼ) = Gᵢⱼ/√(GᵢᵢGⱼⱼ) over all pairs
  i < j; t = n·c̄ / (1 + (n − 1)·c̄); τ = t·mean(τᵢ), i.e. θ₀ + τ = t·mean(θᵢ) + (1 − t)·θ₀.
  A zero τᵢ (cosine undefined) gives τ = 0 (θ₀). 1 + (n − 1)·c̄ ≥ 0 always (it is ‖Σ uᵢ‖²/n for the
  unit vectors uᵢ); where it is ≤ 1e-6 (the uᵢ cancel, and t·mean(τᵢ) is 0/0 up to rounding) t is
  taken as 0. NaN in a τᵢ gives NaN.
* geometric_median of θ₀…θₙ with weights w₀ = 1 (A) and wᵢ: the m minimising Σ wᵢ‖θᵢ − m‖, by
  Weiszfeld's iteration from the weighted mean: dᵢ = ‖θᵢ − m‖, βᵢ = wᵢ / max(dᵢ, 1e-8),
  m ← Σ βᵢθᵢ / Σ βᵢ; stop after the update whose objective f = Σ wᵢdᵢ changed by ≤ 1e-7·f, or after
  200 updates. m stays an affine combination θ₀ + Σ cᵢτᵢ, and ‖θⱼ − m‖² = (eⱼ − c)ᵀG(eⱼ − c)
  (‖θ₀ − m‖² = cᵀGc), so the iteration runs on the n coefficients in float64 (the same iterates as
  on the full tensors, exactly in exact arithmetic) and the tensor is touched twice.
"""
from __future__ import annotations

import numpy as np
import torch

CHUNK = 1 << 20
EPS = 1e-8
FTOL = 1e-7
MAX_ITER = 200
DEGENERATE = 1e-6     # model stock: 1 + (n − 1)·c̄ at or below this is treated as 0


def gram(vectors, chunk: int = CHUNK) -> np.ndarray:
    """Gᵢⱼ = ⟨vᵢ, vⱼ⟩ of the flattened tensors, summed in float64 (an n×n numpy array)."""
    flat = [v.reshape(-1) for v in vectors]
    n, size = len(flat), flat[0].numel()
    g = torch.zeros((n, n), dtype=torch.float64, device=flat[0].device)
    for s in range(0, size, chunk):
        m = torch.stack([f[s:s + chunk].to(torch.float64) for f in flat])
        g += m @ m.T
    return g.cpu().numpy()


def gram_of_differences(base, tuned, chunk: int = CHUNK) -> np.ndarray:
    """Gram matrix of τᵢ = θᵢ − θ₀ (each τᵢ formed in base's dtype, one chunk at a time)."""
    fb = base.reshape(-1)
    flat = [t.to(base.device).reshape(-1) for t in tuned]
    n, size = len(flat), fb.numel()
    g = torch.zeros((n, n), dtype=torch.float64, device=base.device)
    rows = torch.empty((n, min(chunk, size)), dtype=torch.float64, device=base.device)
    for s in range(0, size, chunk):
        b = fb[s:s + chunk]
        m = rows[:, : b.numel()]
        for i, f in enumerate(flat):
            m[i].copy_(torch.sub(f[s:s + chunk], b))      # τᵢ in base's dtype, kept as float64
        g += m @ m.T
    return g.cpu().numpy()


def combine_differences(base, tuned, coeffs, chunk: int = CHUNK) -> torch.Tensor:
    """τ = Σ cᵢ(θᵢ − θ₀) in base's dtype and shape (chunk by chunk: no per-model temporaries)."""
    out = torch.zeros_like(base)
    fo, fb = out.reshape(-1), base.reshape(-1)
    flat = [t.to(base.device).reshape(-1) for t in tuned]
    for s in range(0, fb.numel(), chunk):
        b, o = fb[s:s + chunk], fo[s:s + chunk]
        for f, c in zip(flat, coeffs):
            if c != 0.0:
                o.add_(torch.sub(f[s:s + chunk], b), alpha=float(c))
    return out


def stock_ratio(g: np.ndarray) -> float:
    """Model stock's t from the Gram matrix of n ≥ 2 task vectors (0 when a τᵢ is zero)."""
    n = g.shape[0]
    if not np.all(np.isfinite(g)):
        return float("nan")
    norms = np.sqrt(np.diag(g))
    if n < 2 or not np.all(norms > 0):
        return 0.0
    pairs = [g[i, j] / (norms[i] * norms[j]) for i in range(n) for j in range(i + 1, n)]
    c = float(np.mean(pairs))
    den = 1.0 + (n - 1) * c
    return n * c / den if den > DEGENERATE else 0.0


def model_stock(base, tuned) -> torch.Tensor:
    """τ = t·mean(τᵢ) (module docstring)."""
    t = stock_ratio(gram_of_differences(base, tuned))
    n = len(tuned)
    return combine_differences(base, tuned, [t / n] * n)


def weiszfeld(g: np.ndarray, weights) -> np.ndarray:
    """Coefficients c (m = θ₀ + Σ cᵢτᵢ) of the weighted geometric median of 0, τ₁…τₙ (module doc).

    `weights`: w₁…wₙ (A's weight is 1)."""
    n = g.shape[0]
    w = np.concatenate([[1.0], np.asarray(weights, dtype=np.float64)])
    # point j in coefficient space: p₀ = 0, pⱼ = eⱼ; ‖pⱼ − c‖²_G for all j at once
    points = np.vstack([np.zeros(n), np.eye(n)])

    def distances(c):
        diff = points - c
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, g, diff), 0.0))

    c = w[1:] / w.sum()
    f = float(w @ distances(c))
    for _ in range(MAX_ITER):
        beta = w / np.maximum(distances(c), EPS)
        c = beta[1:] / beta.sum()
        f_new = float(w @ distances(c))
        if abs(f - f_new) <= FTOL * f:
            break
        f = f_new
    return c


def geometric_median(base, tuned, weights) -> torch.Tensor:
    """τ = m − θ₀ for the weighted geometric median m of θ₀…θₙ (module docstring)."""
    c = weiszfeld(gram_of_differences(base, tuned), weights)
    return combine_differences(base, tuned, [float(x) for x in c])
