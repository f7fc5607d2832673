"""The four merge modes with calc mode ``normal`` (spec §3, §20.2, §20.5).

All four are elementwise and write into ``ctx.out`` when given, without temporaries (except the
rare Triple sum α+β = 0 path). NaN in an input that takes part in the formula gives NaN (the
engine refuses NaN results); Weight sum with α exactly 0 or 1 returns A or B untouched, so a NaN in
the other model does not matter there.

Each mode also has a `*_bound(alpha, beta, gamma, mags)`: the largest |result| its formula can give
when each input's magnitude is at most mags[slot] (exact arithmetic; the caller adds float32
rounding, see merger.livegroups), so a live re-merge can prove its result finite and in range.
"""
from __future__ import annotations

import torch

from .base import KeyContext, copy_of


def weight_sum(a, b, c=None, *, alpha, beta=0.0, gamma=0.0, ctx: KeyContext):
    """(1 − α)·A + α·B as ``torch.lerp(A, B, α)``; α = 0 → A exactly, α = 1 → B exactly."""
    if alpha == 0:
        return copy_of(a, ctx)
    if alpha == 1:
        return copy_of(b, ctx)
    return torch.lerp(a, b, float(alpha), out=ctx.out) if ctx.out is not None else torch.lerp(a, b, float(alpha))


def add_difference(a, b, c, *, alpha, beta=0.0, gamma=0.0, ctx: KeyContext):
    """A + α·(B − C), entirely in the compute dtype (B − C is never rounded; fixes spec §17.16).

    Evaluated as ``((B − C)·α) + A`` (SuperMerger's order: α·D first, then the add)."""
    out = torch.sub(b, c, out=ctx.out) if ctx.out is not None else torch.sub(b, c)
    out.mul_(float(alpha))
    out.add_(a)
    return out


def triple_sum(a, b, c, *, alpha, beta, gamma=0.0, ctx: KeyContext):
    """(1 − α − β)·A + α·B + β·C.

    As SuperMerger: if α + β ≠ 0, ``lerp(A, lerp(B, C, β/(α+β)), α+β)``; else the explicit sum."""
    s = alpha + beta
    if s != 0:
        inner = torch.lerp(b, c, beta / s, out=ctx.out) if ctx.out is not None else torch.lerp(b, c, beta / s)
        return torch.lerp(a, inner, s, out=inner)
    out = torch.mul(a, 1 - alpha - beta, out=ctx.out) if ctx.out is not None else torch.mul(a, 1 - alpha - beta)
    out.add_(torch.mul(b, alpha))
    out.add_(torch.mul(c, beta))
    return out


def sum_twice(a, b, c, *, alpha, beta, gamma=0.0, ctx: KeyContext):
    """(1 − β)·((1 − α)·A + α·B) + β·C as ``lerp(lerp(A, B, α), C, β)``."""
    first = torch.lerp(a, b, float(alpha), out=ctx.out) if ctx.out is not None else torch.lerp(a, b, float(alpha))
    return torch.lerp(first, c, float(beta), out=first)


def lerp_bound(ma: float, mb: float, w: float) -> float:
    """|lerp(a, b, w)| ≤ max(ma + |w|·(ma + mb), mb + |1 − w|·(ma + mb)): both forms torch.lerp
    evaluates (a + w·(b − a) for |w| < 0.5, b − (b − a)·(1 − w) otherwise)."""
    d = ma + mb
    return max(ma + abs(w) * d, mb + abs(1.0 - w) * d)


def weight_sum_bound(alpha, beta, gamma, mags) -> float:
    """|(1 − α)·A + α·B| ≤ lerp_bound(|A|, |B|, α)."""
    return lerp_bound(mags["a"], mags["b"], alpha)


def add_difference_bound(alpha, beta, gamma, mags) -> float:
    """|A + α·(B − C)| ≤ |A| + |α|·(|B| + |C|)."""
    return mags["a"] + abs(alpha) * (mags["b"] + mags["c"])


def triple_sum_bound(alpha, beta, gamma, mags) -> float:
    """The two lerps of `triple_sum` (α + β ≠ 0), else |1 − α − β|·|A| + |α|·|B| + |β|·|C|."""
    s = alpha + beta
    if s != 0:
        return lerp_bound(mags["a"], lerp_bound(mags["b"], mags["c"], beta / s), s)
    return abs(1 - alpha - beta) * mags["a"] + abs(alpha) * mags["b"] + abs(beta) * mags["c"]


def sum_twice_bound(alpha, beta, gamma, mags) -> float:
    """lerp_bound(lerp_bound(|A|, |B|, α), |C|, β)."""
    return lerp_bound(lerp_bound(mags["a"], mags["b"], alpha), mags["c"], beta)
