"""extract (spec §4.5; checkpoint version): add the features of B or C that are (dis)similar.

Per key, with base A:  a = B − A,  b = C − A,
    c = clamp(cos(a, b) along the last dim, −1, 1)  (eps 1e-8, a trailing singleton dim kept)
    d = ((c + 1)/2)^γ
    A' = A + lerp(a, b, α) ⊙ lerp(d, 1 − d, β)
α chooses the source (0 → B, 1 → C), β similar (0) vs dissimilar (1) rows, γ ≥ 0 sharpens.
Ranges 0 ≤ α ≤ 1, 0 ≤ β ≤ 1, γ ≥ 0 are checked before the merge (`check`), not asserted
mid-merge (fixes spec §17.6). 0-d tensors keep A. Not elementwise. NaN inputs give NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import AlloyError
from .base import KeyContext, copy_of


def check(alpha: float, beta: float, gamma: float) -> None:
    """AlloyError unless 0 ≤ α ≤ 1, 0 ≤ β ≤ 1 and γ ≥ 0."""
    if not 0 <= alpha <= 1:
        raise AlloyError(f"extract needs 0 ≤ alpha ≤ 1 (got {alpha}).")
    if not 0 <= beta <= 1:
        raise AlloyError(f"extract needs 0 ≤ beta ≤ 1 (got {beta}).")
    if gamma < 0:
        raise AlloyError(f"extract needs gamma ≥ 0 (got {gamma}).")


def extract(a, b, c, *, alpha, beta, gamma, ctx: KeyContext):
    """A + lerp(B − A, C − A, α)·lerp(d, 1 − d, β), d = ((cos_last(B − A, C − A) + 1)/2)^γ."""
    if a.dim() == 0:
        return copy_of(a, ctx)
    da = torch.sub(b, a)
    db = torch.sub(c, a)
    cos = F.cosine_similarity(da, db, dim=-1, eps=1e-8).clamp(-1, 1).unsqueeze(-1)
    d = ((cos + 1) / 2) ** gamma
    weight = torch.lerp(d, 1 - d, float(beta))
    mix = torch.lerp(da, db, float(alpha), out=ctx.out) if ctx.out is not None else torch.lerp(da, db, float(alpha))
    return mix.mul_(weight).add_(a)
