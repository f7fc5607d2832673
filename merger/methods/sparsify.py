"""Choosing entries of a task vector: magnitude ranks (TIES trim, breadcrumbs) and DARE's random drop.

Counts: ``kept_count(f, n) = math.ceil(f * n)`` in Python floats, clamped to [0, n].

Magnitude order: entries are ranked by |τ| from largest to smallest; equal magnitudes are ranked by
their flat (row-major) index, lower first. "The k entries of largest |τ|" is therefore one set, the
same on every device and in every run. Computed without a sort: v = the k-th largest magnitude
(``kthvalue``); every entry with |τ| > v is taken, then entries with |τ| = v in index order until
there are k. When v = 0 every zero is taken instead: those entries are zero, so which of them are
"kept" changes no value of the result, and the index pass over a large tie set is skipped. A NaN
magnitude ranks above every number, and non-finite entries (NaN, ±inf) are always kept, even as
breadcrumbs' outliers: a corrupt input reaches the result and the engine refuses it instead of the
trim hiding it.

The functions ending in ``_`` work in place on a tensor the caller owns (a fresh task vector), so
a trim holds one copy less; the others leave their input alone.

DARE masks: mᵢ = (u < d) with u ~ U[0, 1) in float32 from torch's CPU generator (mt19937), seeded
with the first 8 bytes (little-endian, top bit cleared) of sha256("alloy-dare:{seed}:{index}:{key}"),
drawn on the CPU in row-major order whatever the compute device, then moved to it: a recipe gives
the same masks, byte for byte, on any machine and device (for a given torch version).
"""
from __future__ import annotations

import hashlib
import math

import torch


def kept_count(fraction: float, n: int) -> int:
    """⌈fraction·n⌉ (Python float arithmetic), clamped to [0, n]."""
    return max(0, min(n, math.ceil(float(fraction) * n)))


def top_mask(mag: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of mag's shape selecting its k largest entries (mag ≥ 0; ties: lower index first,
    except that tied zeros are all selected, see the module docstring)."""
    flat = mag.reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros(mag.shape, dtype=torch.bool, device=mag.device)
    if k >= n:
        return torch.ones(mag.shape, dtype=torch.bool, device=mag.device)
    v = torch.kthvalue(flat, n - k + 1).values
    mask = flat > v
    if float(v) == 0.0:
        return (mask | (flat == v)).reshape(mag.shape)
    need = k - int(mask.sum())
    tied = torch.nonzero(flat == v).reshape(-1)
    mask[tied[:need]] = True
    return mask.reshape(mag.shape)


def _magnitude(tau: torch.Tensor) -> torch.Tensor:
    """|τ| with NaN as +inf (ranked first)."""
    return tau.abs().nan_to_num_(nan=math.inf, posinf=math.inf)


def trim_(tau: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trim in place: τ keeps its ⌈d·n⌉ entries of largest |τ|, 0 elsewhere; returns τ."""
    keep = top_mask(_magnitude(tau), kept_count(density, tau.numel()))
    keep |= ~torch.isfinite(tau)
    return tau.masked_fill_(~keep, 0)


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """`trim_` on a copy (τ itself is left alone)."""
    return trim_(tau.clone(), density)


def breadcrumb_(tau: torch.Tensor, density: float, outliers: float) -> torch.Tensor:
    """Breadcrumbs in place: zero the ⌈γ·n⌉ entries of largest |τ|, keep the next ⌈d·n⌉, zero the
    rest; returns τ."""
    n = tau.numel()
    mag = _magnitude(tau)
    top = kept_count(outliers, n)
    keep = top_mask(mag, min(n, top + kept_count(density, n)))
    if top:
        keep &= ~top_mask(mag, top)
    del mag
    keep |= ~torch.isfinite(tau)
    return tau.masked_fill_(~keep, 0)


def dare_seed(seed: int, index: int, key: str) -> int:
    """The 63-bit generator seed of the DARE mask of fine-tune `index` (B = 1 … F = 5) at `key`."""
    digest = hashlib.sha256(f"alloy-dare:{int(seed)}:{int(index)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare_mask(shape, density: float, seed: int, index: int, key: str, device=None) -> torch.Tensor:
    """Boolean Bernoulli(d) mask: u < d, u uniform float32 drawn on the CPU (module docstring)."""
    g = torch.Generator(device="cpu").manual_seed(dare_seed(seed, index, key))
    u = torch.rand(tuple(shape), generator=g, dtype=torch.float32)
    mask = u < float(density)
    return mask if device is None else mask.to(device)


def dare_(tau: torch.Tensor, density: float, seed: int, index: int, key: str) -> torch.Tensor:
    """DARE drop and rescale in place: τ̃ = m·τ/d; returns τ."""
    mask = dare_mask(tau.shape, density, seed, index, key, tau.device)
    return tau.div_(float(density)).masked_fill_(~mask, 0)
