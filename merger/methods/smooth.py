"""smoothAdd (spec §4.4, §20.8): Add difference with a smoothed difference.

    D  = B − C (compute dtype; SuperMerger rounded it to the model dtype first, §17.16)
    D₁ = scipy.ndimage.median_filter(D, size=3)      (every axis, mode "reflect")
    D₂ = scipy.ndimage.gaussian_filter(D₁, sigma=1)  (every axis, truncate 4, mode "reflect")
    A' = A + α·D₂

The filters run on the CPU in float32 whatever the compute device or dtype (as SuperMerger), and
D₂ goes back to A's device and dtype. "smoothAdd MT" is the same math. Not elementwise.
NaN in the difference spreads to its neighbourhood.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import KeyContext


def smooth_difference(d: torch.Tensor) -> torch.Tensor:
    """median_filter(size=3) then gaussian_filter(sigma=1) of `d`, on CPU in float32 (a new CPU tensor)."""
    import scipy.ndimage  # imported on first use: it costs every CLI start 0.2 s otherwise

    x = d.detach().to("cpu", torch.float32).contiguous().numpy()
    x = scipy.ndimage.median_filter(x, size=3)
    x = scipy.ndimage.gaussian_filter(x, sigma=1)
    return torch.from_numpy(np.asarray(x, dtype=np.float32)).reshape(d.shape)


def smooth_add(a, b, c, *, alpha, beta=0.0, gamma=0.0, ctx: KeyContext):
    """A + α·gaussian(median(B − C)) (see module doc)."""
    d2 = smooth_difference(torch.sub(b, c)).to(device=a.device, dtype=a.dtype)
    out = torch.mul(d2, float(alpha), out=ctx.out) if ctx.out is not None else d2.mul_(float(alpha))
    out.add_(a)
    return out
