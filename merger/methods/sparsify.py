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
    return _top(mag, k)[0]


def _top(mag: torch.Tensor, k: int) -> tuple:
    """(top_mask(mag, k), the k-th largest value as a float, or None when k ≤ 0 or k ≥ n)."""
    flat = mag.reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros(mag.shape, dtype=torch.bool, device=mag.device), None
    if k >= n:
        return torch.ones(mag.shape, dtype=torch.bool, device=mag.device), None
    v, above, equal = kth_largest(flat, k)
    if float(v) == 0.0 or (above is not None and k - above == equal):
        return torch.ge(flat, v).reshape(mag.shape), float(v)      # every tie is taken
    mask = flat > v
    need = k - (int(mask.sum()) if above is None else above)
    tied = torch.nonzero(flat == v).reshape(-1)
    mask[tied[:need]] = True
    return mask.reshape(mag.shape), float(v)


RADIX_MIN = 1 << 16       # below this many entries kthvalue is as fast


def kth_largest(flat: torch.Tensor, k: int) -> tuple:
    """(v, above, equal): the k-th largest entry of the flat tensor (1 ≤ k ≤ n) as a 0-d tensor, the
    number of entries > v and = v (None, None when not counted).

    Float32 on the CPU (entries ≥ 0, so their bit patterns order as int32): two counting passes, the
    top 16 bits then the low 16 bits of the bin that holds rank k; exact, and 3–4× faster than
    torch's kthvalue (single-threaded selection). Otherwise torch.kthvalue."""
    n = flat.numel()
    if flat.dtype != torch.float32 or flat.device.type != "cpu" or n < RADIX_MIN:
        return torch.kthvalue(flat, n - k + 1).values, None, None
    bits = flat.contiguous().view(torch.int32)
    high = torch.bitwise_right_shift(bits, 16)
    b, above = _bin_of_rank(torch.bincount(high, minlength=1 << 15), k)
    counts = torch.bincount(torch.bitwise_and(bits[high == b], 0xFFFF), minlength=1 << 16)
    low, above_in_bin = _bin_of_rank(counts, k - above)
    value = torch.tensor((b << 16) | low, dtype=torch.int32).view(torch.float32)
    return value, above + above_in_bin, int(counts[low])


def _bin_of_rank(counts: torch.Tensor, k: int) -> tuple:
    """(the bin holding the k-th largest entry, the number of entries in higher bins)."""
    from_top = counts.flip(0).cumsum(0)
    j = int(torch.searchsorted(from_top, k))
    return counts.numel() - 1 - j, int(from_top[j - 1]) if j else 0


def _magnitude(tau: torch.Tensor) -> torch.Tensor:
    """|τ| with NaN as +inf (ranked first)."""
    return tau.abs().nan_to_num_(nan=math.inf, posinf=math.inf)


def trim_(tau: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trim in place: τ keeps its ⌈d·n⌉ entries of largest |τ|, 0 elsewhere; returns τ."""
    n = tau.numel()
    k = kept_count(density, n)
    keep, v = _top(_magnitude(tau), k)
    if k >= n or v == 0.0:               # every entry is kept
        return tau
    if v is None or math.isinf(v):       # else every non-finite entry (|τ| = inf > v) is kept already
        keep |= ~torch.isfinite(tau)
    # τ·keep + 0 (a third of masked_fill_'s time): dropped entries become +0 as masked_fill_(…, 0)
    # makes them; kept ones are unchanged (|τ| ≥ v > 0, or non-finite), so the bits are the same.
    return tau.mul_(keep).add_(0.0)


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
