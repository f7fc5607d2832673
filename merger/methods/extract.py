"""extract (spec §4.5; checkpoint version): add the features of B or C that are (dis)similar.

Per key, with base A:  a = B − A,  b = C − A,
    c = clamp(cos(a, b) along the last dim, −1, 1)  (Σab / (max(‖a‖, 1e-8)·max(‖b‖, 1e-8));
        a trailing singleton dim kept)
    d = ((c + 1)/2)^γ
    A' = A + lerp(a, b, α) ⊙ lerp(d, 1 − d, β)
α chooses the source (0 → B, 1 → C), β similar (0) vs dissimilar (1) rows, γ ≥ 0 sharpens.
Ranges 0 ≤ α ≤ 1, 0 ≤ β ≤ 1, γ ≥ 0 are checked before the merge (`check`), not asserted
mid-merge (fixes spec §17.6). 0-d tensors keep A. Not elementwise. NaN inputs give NaN.
"""
from __future__ import annotations

import torch

from ..errors import AlloyError
from .base import KeyContext, copy_of, temp

EPS = 1e-8


def check(alpha: float, beta: float, gamma: float) -> None:
    """AlloyError unless 0 ≤ α ≤ 1, 0 ≤ β ≤ 1 and γ ≥ 0."""
    if not 0 <= alpha <= 1:
        raise AlloyError(f"extract needs 0 ≤ alpha ≤ 1 (got {alpha}).")
    if not 0 <= beta <= 1:
        raise AlloyError(f"extract needs 0 ≤ beta ≤ 1 (got {beta}).")
    if gamma < 0:
        raise AlloyError(f"extract needs gamma ≥ 0 (got {gamma}).")


def _cos_last(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σxy / (max(‖x‖, eps)·max(‖y‖, eps)) along the last dim (short rows: a few strided
    operations instead of a reduction over 3 elements per row, which torch runs slowly)."""
    if x.shape[-1] <= 8:
        xs, ys = x.unbind(-1), y.unbind(-1)
        dot, nx, ny = xs[0] * ys[0], xs[0] * xs[0], ys[0] * ys[0]
        for xj, yj in zip(xs[1:], ys[1:]):
            dot.addcmul_(xj, yj)
            nx.addcmul_(xj, xj)
            ny.addcmul_(yj, yj)
        nx.sqrt_()
        ny.sqrt_()
    else:
        dot = torch.linalg.vecdot(x, y, dim=-1)
        nx, ny = torch.linalg.vector_norm(x, dim=-1), torch.linalg.vector_norm(y, dim=-1)
    return dot.div_(nx.clamp_min_(EPS).mul_(ny.clamp_min_(EPS)))


def extract(a, b, c, *, alpha, beta, gamma, ctx: KeyContext):
    """A + lerp(B − A, C − A, α)·lerp(d, 1 − d, β), d = ((cos_last(B − A, C − A) + 1)/2)^γ."""
    if a.dim() == 0:
        return copy_of(a, ctx)
    da = torch.sub(b, a, out=temp(ctx, "extract.da", a))
    db = torch.sub(c, a, out=temp(ctx, "extract.db", a))
    cos = _cos_last(da, db).clamp_(-1, 1).unsqueeze_(-1)
    d = cos.add_(1).div_(2).pow_(gamma)
    weight = torch.lerp(d, 1 - d, float(beta))
    mix = torch.lerp(da, db, float(alpha), out=da)
    return torch.addcmul(a, mix, weight, out=ctx.out if ctx.out is not None else mix)
