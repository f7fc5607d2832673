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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AlloyError
from .base import KeyContext, copy_of, emit

EPS = 1e-8


@dataclass(frozen=True)
class CosineStats:
    """min S and max S of the trimmed pre-pass values (Python floats, float64)."""

    min: float
    max: float
    count: int


def _colcos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along dim 0, eps 1e-8 (torch's definition)."""
    return F.cosine_similarity(x, y, dim=0, eps=EPS)


def _gcos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """<vec x, vec y> / (‖x‖·‖y‖) as a 0-d tensor (NaN when either is all zero)."""
    dot = torch.dot(x.reshape(-1), y.reshape(-1))
    return dot / (torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y))


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=0)


def combined_a(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cosineA similarity: (colcos(N(A),N(B)) + gcos(N(A),N(B))) / 2."""
    na, nb = _normalized(a), _normalized(b)
    return (_colcos(na, nb) + _gcos(na, nb)) / 2.0


def combined_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cosineB similarity: (colcos(A,B) + gcos(A,B)) / 2."""
    return (_colcos(a, b) + _gcos(a, b)) / 2.0


def prepass_a(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cosineA statistic of one key: the values of colcos(N(A), N(B)), flattened."""
    if a.dim() == 0:
        return a.new_empty(0)
    return _colcos(_normalized(a), _normalized(b)).reshape(-1)


def prepass_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cosineB statistic of one key: the values of (colcos(A,B) + gcos(A,B)) / 2, flattened."""
    if a.dim() == 0:
        return a.new_empty(0)
    return combined_b(a, b).reshape(-1)


def finalize(values: list) -> CosineStats:
    """All keys' pre-pass values → CosineStats (NaNs dropped, 1st then 99th percentile trimmed)."""
    parts = [np.asarray(v.detach().to("cpu", torch.float64).numpy() if torch.is_tensor(v) else v,
                        dtype=np.float64).reshape(-1) for v in values]
    sims = np.concatenate(parts) if parts else np.empty(0)
    sims = sims[~np.isnan(sims)]
    if sims.size == 0:
        raise AlloyError("The cosine merge found no tensors of model A and model B to compare.")
    sims = sims[sims >= np.percentile(sims, 1, method="midpoint")]
    sims = sims[sims <= np.percentile(sims, 99, method="midpoint")]
    return CosineStats(min=float(sims.min()), max=float(sims.max()), count=int(sims.size))


def _stats(ctx: KeyContext) -> CosineStats:
    if not isinstance(ctx.stats, CosineStats):
        raise ValueError(f"cosine merge of {ctx.key}: ctx.stats must come from the method's finalize().")
    return ctx.stats


def _weight(c: torch.Tensor, stats: CosineStats, shift: float) -> torch.Tensor:
    """k = clip((c − minS)/(maxS − minS) − shift, 0, 1)."""
    span = stats.max - stats.min
    if span == 0:
        k = (c >= stats.min).to(c.dtype)
    else:
        k = (c - stats.min) / span
    return (k - shift).clip(min=0, max=1.0)


def _blend(a, b, c_sim, shift, ctx: KeyContext):
    k = _weight(c_sim, _stats(ctx), shift)
    if ctx.out is not None:
        return torch.lerp(b, a, k, out=ctx.out)
    return torch.lerp(b, a, k)


def _zero(x: torch.Tensor) -> bool:
    return not bool(torch.any(x != 0))


def cosine_a(a, b, c=None, *, alpha, beta=0.0, gamma=0.0, ctx: KeyContext):
    """lerp(B, A, k) with k = clip(norm. cosineA similarity − |α|, 0, 1) per column (see module doc)."""
    if a.dim() == 0 or _zero(a) or _zero(b):
        return copy_of(a, ctx)
    return emit(_blend(a, b, combined_a(a, b), abs(alpha), ctx), ctx)


def cosine_b(a, b, c=None, *, alpha, beta=0.0, gamma=0.0, ctx: KeyContext):
    """lerp(B, A, k) with k = clip(norm. cosineB similarity − α, 0, 1) per column (see module doc)."""
    if a.dim() == 0 or _zero(a) or _zero(b):
        return copy_of(a, ctx)
    return emit(_blend(a, b, combined_b(a, b), alpha, ctx), ctx)
