"""smoothAdd (spec §4.4, §20.8): Add difference with a smoothed difference.

    D  = B − C (compute dtype; SuperMerger rounded it to the model dtype first, §17.16)
    D₁ = median over the 3-wide window along every axis   (SciPy median_filter(D, size=3), "reflect")
    D₂ = Gaussian filter σ = 1 of D₁ along every axis      (SciPy gaussian_filter(D₁, 1), truncate 4, "reflect")
    A' = A + α·D₂

Both filters run as tensor operations on the merge device in the compute dtype
(`merger.methods.filters`): the median is exact (it equals SciPy's bit for bit), the Gaussian
agrees with SciPy within the compute dtype's rounding. "smoothAdd MT" is the same math.
Not elementwise. NaN in the difference spreads to its neighbourhood.
"""
from __future__ import annotations

import torch

from .base import KeyContext
from .filters import gaussian, gaussian_weights, median3

# How far (in positions along an axis) an output depends on the difference: 1 (median) + 4 (Gaussian).
HALO = 1 + len(gaussian_weights()) // 2


def smooth_difference(d: torch.Tensor) -> torch.Tensor:
    """gaussian(median3(d)): a new tensor of d's shape, dtype and device."""
    return gaussian(median3(d))


def smooth_add(a, b, c, *, alpha, beta=0.0, gamma=0.0, ctx: KeyContext):
    """A + α·gaussian(median(B − C)) (see module doc)."""
    d2 = smooth_difference(torch.sub(b, c))
    out = torch.mul(d2, float(alpha), out=ctx.out) if ctx.out is not None else d2.mul_(float(alpha))
    out.add_(a)
    return out
