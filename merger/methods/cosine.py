"""cosineA / cosineB (spec §4.2, §20.3, §20.5): Weight sum with a per-column weight from similarity.

Definitions for tensors X, Y of shape [n0, ...]:
* colcos(X, Y): cosine similarity along dim 0 (eps 1e-8), shape [n1, ...] (a scalar for 1-D);
* gcos(X, Y) = <vec X, vec Y> / (‖X‖·‖Y‖);
* N(X): X with every slice along dim 0 L2-normalised (``normalize(p=2, dim=0)``).

Pre-pass (the engine runs it over every key that contains ``model``, exists in B and is not VAE):
* cosineA collects colcos(N(A), N(B)); cosineB collects (colcos(A, B) + gcos(A, B)) / 2.
* finalize: drop NaNs, drop values below the 1st percentile, then drop values above the 99th
  percentile of what remains (numpy "midpoint" method); keep min S and max S.
Per key: cosineA c = (colcos(N(A),N(B)) + gcos(N(A),N(B))) / 2, k = clip((c − minS)/(maxS − minS) − |α|, 0, 1);
         cosineB c = (colcos(A,B) + gcos(A,B)) / 2,             k = clip((c − minS)/(maxS − minS) − α, 0, 1);
result = lerp(B, A, k) = k·A + (1 − k)·B, k broadcast over dim 0 (k = 1 → A exactly, 0 → B exactly).

Fixes: an all-zero A or B tensor (gcos = 0/0) keeps A instead of becoming all-NaN (§20.3); when
maxS = minS the normalised similarity is taken as 1 where c ≥ minS, else 0 (SuperMerger divides by
zero). 0-d tensors keep A. NaN inputs give NaN.

Every similarity comes from three per-column sums Σ a·b, Σ a², Σ b² over dim 0, accumulated in
float64 from float64 products (exact for float32 inputs) and streamed over row chunks, so the result
does not depend on the device's summation order (cpu and cuda agree) and no full-size temporary
exists. The engine's statistics pass keeps each key's c (`keystats`), so the merge pass only blends.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import AlloyError
from .base import KeyContext, copy_of, emit

EPS = 1e-8        # cosine_similarity's eps
NORM_EPS = 1e-12  # normalize's eps
ROWS_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class CosineStats:
    """min S and max S of the trimmed pre-pass values (Python floats, float64), and per key the
    similarity c and whether A or B is all zero (from the engine's statistics pass)."""

    min: float
    max: float
    count: int
    per_key: dict = field(default_factory=dict, compare=False, repr=False)


def column_sums(a: torch.Tensor, b: torch.Tensor) -> tuple:
    """(Σ a·b, Σ a², Σ b²) over dim 0, float64, shape a.shape[1:] flattened (a, b of one shape, ≥ 1-D).

    Products are exact: float32 products of fp16 values (22 significant bits), float64 otherwise."""
    a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    width = a2.shape[1]
    exact32 = a.dtype == torch.float16 and b.dtype == torch.float16
    dtype = torch.float32 if exact32 else torch.float64
    sums = torch.zeros(3, width, dtype=torch.float64, device=a.device)
    step = max(1, ROWS_ELEMENTS // max(1, width))
    for r in range(0, a2.shape[0], step):
        x = a2[r:r + step].to(dtype)
        y = b2[r:r + step].to(a.device, dtype)
        sums[0] += (x * y).sum(0, dtype=torch.float64)
        sums[1] += (x * x).sum(0, dtype=torch.float64)
        sums[2] += (y * y).sum(0, dtype=torch.float64)
    return sums[0], sums[1], sums[2]


def similarity(calc: str, a: torch.Tensor, b: torch.Tensor) -> tuple:
    """(pre-pass values, c, zero) of one key (float64 on a's device; see the module doc)."""
    if a.dim() == 0:
        empty = torch.empty(0, dtype=torch.float64, device=a.device)
        return empty, empty, True
    ab, aa, bb = column_sums(a, b)
    zero = bool(aa.sum() == 0) or bool(bb.sum() == 0)
    na, nb = aa.sqrt(), bb.sqrt()
    if calc == "cosineA":
        dot = ab / (na.clamp_min(NORM_EPS) * nb.clamp_min(NORM_EPS))      # Σ N(a)·N(b) per column
        ua, ub = na / na.clamp_min(NORM_EPS), nb / nb.clamp_min(NORM_EPS)  # ‖N(a)‖, ‖N(b)‖ per column
        col = dot / (ua.clamp_min(EPS) * ub.clamp_min(EPS))
        glob = dot.sum() / ((ua * ua).sum().sqrt() * (ub * ub).sum().sqrt())
        c = (col + glob) / 2.0
        return col.reshape(-1), c, zero
    col = ab / (na.clamp_min(EPS) * nb.clamp_min(EPS))
    glob = ab.sum() / (aa.sum().sqrt() * bb.sum().sqrt())
    c = (col + glob) / 2.0
    return c.reshape(-1), c, zero


def keystats_a(a, b) -> tuple:
    values, c, zero = similarity("cosineA", a, b)
    return values, (c, zero)


def keystats_b(a, b) -> tuple:
    values, c, zero = similarity("cosineB", a, b)
    return values, (c, zero)


def prepass_a(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cosineA statistic of one key: the values of colcos(N(A), N(B)), flattened (float64)."""
    return similarity("cosineA", a, b)[0]


def prepass_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cosineB statistic of one key: the values of (colcos(A,B) + gcos(A,B)) / 2, flattened (float64)."""
    return similarity("cosineB", a, b)[0]


def finalize(values: list, per_key: dict | None = None) -> CosineStats:
    """All keys' pre-pass values → CosineStats (NaNs dropped, 1st then 99th percentile trimmed)."""
    parts = [np.asarray(v.detach().to("cpu", torch.float64).numpy() if torch.is_tensor(v) else v,
                        dtype=np.float64).reshape(-1) for v in values]
    sims = np.concatenate(parts) if parts else np.empty(0)
    sims = sims[~np.isnan(sims)]
    if sims.size == 0:
        raise AlloyError("The cosine merge found no tensors of model A and model B to compare.")
    sims = sims[sims >= np.percentile(sims, 1, method="midpoint")]
    sims = sims[sims <= np.percentile(sims, 99, method="midpoint")]
    return CosineStats(min=float(sims.min()), max=float(sims.max()), count=int(sims.size),
                       per_key=dict(per_key or {}))


def _stats(ctx: KeyContext) -> CosineStats:
    if not isinstance(ctx.stats, CosineStats):
        raise ValueError(f"cosine merge of {ctx.key}: ctx.stats must come from the method's finalize().")
    return ctx.stats


def _weight(c: torch.Tensor, stats: CosineStats, shift: float) -> torch.Tensor:
    """k = clip((c − minS)/(maxS − minS) − shift, 0, 1) (float64)."""
    span = stats.max - stats.min
    if span == 0:
        k = (c >= stats.min).to(c.dtype)
    else:
        k = (c - stats.min) / span
    return (k - shift).clip(min=0, max=1.0)


def _blend(calc: str, a, b, shift: float, ctx: KeyContext):
    """lerp(B, A, k); a and b are the key's tensors or, from the engine, chunks of whole dim-0
    slices of them (the key's c and zero flag then come from the statistics pass)."""
    if a.dim() == 0:
        return copy_of(a, ctx)
    stats = _stats(ctx)
    cached = stats.per_key.get(ctx.key)
    if cached is not None and cached[0].numel() == a[0].numel():
        c, zero = cached
    else:
        _, c, zero = similarity(calc, a, b)
    if zero:
        return copy_of(a, ctx)
    k = _weight(c.to(a.device), stats, shift).to(a.dtype).reshape(a.shape[1:])
    if ctx.out is not None:
        return emit(torch.lerp(b, a, k, out=ctx.out), ctx)
    return torch.lerp(b, a, k)


def cosine_a(a, b, c=None, *, alpha, beta=0.0, gamma=0.0, ctx: KeyContext):
    """lerp(B, A, k) with k = clip(norm. cosineA similarity − |α|, 0, 1) per column (see module doc)."""
    return _blend("cosineA", a, b, abs(alpha), ctx)


def cosine_b(a, b, c=None, *, alpha, beta=0.0, gamma=0.0, ctx: KeyContext):
    """lerp(B, A, k) with k = clip(norm. cosineB similarity − α, 0, 1) per column (see module doc)."""
    return _blend("cosineB", a, b, alpha, ctx)
