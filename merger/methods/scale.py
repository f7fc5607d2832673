"""self (spec §4.7, §20.6): scale model A's tensors.

    A' = α·A, except keys containing ``to_out``, ``proj_out`` or ``norm`` (kept as A);
    α = 0 means "leave unchanged", not zero (SuperMerger's discontinuity, kept so recipes reproduce).
B is not used. Elementwise. NaN in A stays NaN.
"""
from __future__ import annotations

import torch

from .base import KeyContext, copy_of

EXCLUDED = ("to_out", "proj_out", "norm")


def is_scaled(key: str) -> bool:
    """True unless the key contains one of the excluded substrings."""
    return not any(s in key for s in EXCLUDED)


def scale_self(a, b=None, c=None, *, alpha, beta=0.0, gamma=0.0, ctx: KeyContext):
    """α·A (A unchanged for α = 0 or excluded keys)."""
    if alpha == 0 or not is_scaled(ctx.key):
        return copy_of(a, ctx)
    return torch.mul(a, float(alpha), out=ctx.out) if ctx.out is not None else torch.mul(a, float(alpha))


def scale_self_bound(alpha, beta, gamma, mags) -> float:
    """|α·A| or |A|: at most max(1, |α|)·|A|."""
    return max(1.0, abs(alpha)) * mags["a"]
