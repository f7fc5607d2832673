"""trainDifference (spec §4.3): Add difference that does not re-add what A already has.

    A' = A + 1.8·α·D·|B − A| / (|B − C| + |B − A|),  D = B − C,  the fraction being 0 where 0/0.

Elementwise. Where B equals C the update is 0, so A is returned unchanged (SuperMerger checks the
whole tensor for B == C and skips it: same values; only a −0.0 in A may come back as +0.0).
Evaluated in SuperMerger's order ((scale·D)·(1.8α) + A), in the compute dtype, with one temporary.
NaN in A, B or C gives NaN.
"""
from __future__ import annotations

import torch

from .base import KeyContext

FACTOR = 1.8


def train_difference(a, b, c, *, alpha, beta=0.0, gamma=0.0, ctx: KeyContext):
    """A + 1.8·α·(B − C)·|B − A| / (|B − C| + |B − A|) (0/0 → 0)."""
    out = torch.sub(b, a, out=ctx.out) if ctx.out is not None else torch.sub(b, a)
    out.abs_()                              # |B − A|
    tmp = torch.sub(b, c).abs_()            # |B − C|
    tmp.add_(out)                           # |B − C| + |B − A|
    out.div_(tmp)                           # scale in [0, 1]; NaN only for 0/0 or NaN inputs
    out.nan_to_num_(nan=0.0)                # 0/0 → 0 (NaN inputs still propagate through D or A)
    torch.sub(b, c, out=tmp)                # D
    out.mul_(tmp)
    out.mul_(alpha * FACTOR)
    out.add_(a)
    return out
