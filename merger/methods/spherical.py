"""SLERP of two models (ecosystem §2.4, mergekit's definition on the raw tensors).

Per tensor, flattened: cos Ω = ⟨A, B⟩ / (‖A‖·‖B‖) (inner products summed in float64),
Ω = arccos(cos Ω), and

    slerp(A, B, t) = (sin((1 − t)·Ω)·A + sin(t·Ω)·B) / sin Ω,

falling back to lerp (1 − t)·A + t·B (``torch.lerp``, as Weight sum) when |cos Ω| > 0.9995 or a
norm is 0. t = alpha (per block with alpha_blocks). The coefficients are computed in float64 and the
tensors combined in the compute dtype; the three inner products are independent of t, so a t sweep
re-uses them (`slerp_stats`) and costs one pass per key.
"""
from __future__ import annotations

import math

import torch

from .geometric import gram

COLINEAR = 0.9995


def slerp_stats(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(⟨A,A⟩, ⟨A,B⟩, ⟨B,B⟩) as a float64 CPU tensor of 3 values."""
    g = gram([a, b.to(device=a.device, dtype=a.dtype)])
    return torch.tensor([g[0, 0], g[0, 1], g[1, 1]], dtype=torch.float64)


def slerp_coefficients(stats, t: float) -> tuple[float, float] | None:
    """(cA, cB) with slerp = cA·A + cB·B, or None where the lerp fallback applies."""
    aa, ab, bb = (float(x) for x in stats)
    if aa <= 0.0 or bb <= 0.0:
        return None
    cos = ab / math.sqrt(aa * bb)
    if abs(cos) > COLINEAR:
        return None
    omega = math.acos(max(-1.0, min(1.0, cos)))
    s = math.sin(omega)
    return math.sin((1.0 - t) * omega) / s, math.sin(t * omega) / s


def slerp_apply(a: torch.Tensor, b: torch.Tensor, stats, t: float, out=None) -> torch.Tensor:
    """slerp(A, B, t) from precomputed `slerp_stats` (into `out` when given)."""
    b = b.to(device=a.device, dtype=a.dtype)
    coeffs = slerp_coefficients(stats, float(t))
    if coeffs is None:
        return torch.lerp(a, b, float(t), out=out) if out is not None else torch.lerp(a, b, float(t))
    ca, cb = coeffs
    res = torch.mul(a, ca, out=out) if out is not None else torch.mul(a, ca)
    return res.add_(b, alpha=cb)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """slerp(A, B, t) of two tensors in the compute dtype (module docstring)."""
    return slerp_apply(a, b, slerp_stats(a, b), t)
