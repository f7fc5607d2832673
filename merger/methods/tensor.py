"""tensor / tensor2 (spec §4.6, §20.4): take a window of slices from B instead of averaging.

Along the slicing axis of length n (Python ``int()`` truncation and slice semantics, as SuperMerger):
* α + β ≤ 1: slices [int(n·β), int(n·(α+β))) come from B, the rest stay A;
* α + β > 1: the result is B except slices [int(n·(α+β−1)), int(n·β)) which come from A.
``tensor`` slices dim 0. ``tensor2`` slices dim 1 of ≥2-D tensors, with n = size of dim 1 when
that is > 100, else — SuperMerger's quirk, kept so recipes reproduce — n = size of dim 0 (so the
window usually covers nothing, or everything); 1-D tensors use dim 0.
0-d tensors keep A. The same rule applies to any number of dims (SuperMerger left ≥5-D tensors
alone; no Stable Diffusion tensor has 5 dims). Not elementwise; NaN is copied as is.
"""
from __future__ import annotations


from .base import KeyContext, copy_of


def window(n: int, alpha: float, beta: float) -> tuple[int, int, bool]:
    """(start, end, b_inside): the slice window and whether it holds B (True) or A (False)."""
    if alpha + beta <= 1:
        return int(n * beta), int(n * (alpha + beta)), True
    return int(n * (alpha + beta - 1)), int(n * beta), False


def _swap(a, b, axis: int, n: int, alpha: float, beta: float, ctx: KeyContext):
    start, end, b_inside = window(n, alpha, beta)
    outside, inside = (a, b) if b_inside else (b, a)
    out = copy_of(outside, ctx)
    index = (slice(None),) * axis + (slice(start, end),)
    out[index] = inside[index]
    return out


def tensor(a, b, c=None, *, alpha, beta, gamma=0.0, ctx: KeyContext):
    """Slices along dim 0 in the window from B (see module doc)."""
    if a.dim() == 0:
        return copy_of(a, ctx)
    return _swap(a, b, 0, a.shape[0], alpha, beta, ctx)


def tensor2(a, b, c=None, *, alpha, beta, gamma=0.0, ctx: KeyContext):
    """Slices along dim 1 (dim 0 for 1-D) in the window from B (see module doc, incl. the ≤ 100 quirk)."""
    if a.dim() == 0:
        return copy_of(a, ctx)
    if a.dim() == 1:
        return _swap(a, b, 0, a.shape[0], alpha, beta, ctx)
    n = a.shape[1] if a.shape[1] > 100 else a.shape[0]
    return _swap(a, b, 1, n, alpha, beta, ctx)
