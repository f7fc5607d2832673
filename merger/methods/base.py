"""Shared types of the merge-method registry: `Method`, `KeyContext` and small kernel helpers.

Kernels have the signature ``fn(a, b, c, *, alpha, beta, gamma, ctx) -> Tensor``:
* a, b, c are tensors of one shape in the compute dtype (float32 or float64), on one device;
  b or c is None when the method does not use it. Kernels never modify them (they may be cached).
* The result has a's shape and dtype. When ``ctx.out`` is given (a buffer of a's shape and
  dtype) the kernel writes the result there and returns ``ctx.out``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import AlloyError


@dataclass
class KeyContext:
    """Per-key information a kernel may use.

    key: the state-dict key (``self`` excludes keys by substring).
    stats: the object ``Method.finalize`` returned (cosine modes), else None.
    out: a buffer of a's shape and dtype to write the result into, or None.
    generator: a per-key seeded generator (unused by the current methods; kept for DESIGN.md).
    scratch: the executor's reused chunk buffers (`merger.kernels.Scratch`) for a kernel's
        temporaries (`temp`), or None.
    """

    key: str = ""
    stats: object | None = None
    out: torch.Tensor | None = None
    generator: torch.Generator | None = None
    scratch: object | None = None


def temp(ctx: KeyContext, name: str, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of `like`'s shape, dtype, device and memory order (a column-major
    chunk stays column-major): a reused buffer of ctx.scratch when there is one, else a new tensor.
    Names starting with the kernel's own name keep kernels' buffers apart."""
    s = ctx.scratch
    if s is None or s.dtype != like.dtype or s.device != like.device:
        return torch.empty_like(like)
    order = memory_order(like)
    dense = s.get(name, like.numel()).view([like.shape[d] for d in order])
    return dense.permute(sorted(range(like.dim()), key=order.__getitem__))


def memory_order(t: torch.Tensor) -> list:
    """t's dims from the outermost in memory to the innermost (largest stride first): permuted so,
    a dense block in any memory order is contiguous."""
    return sorted(range(t.dim()), key=lambda d: -t.stride(d))


@dataclass(frozen=True)
class Method:
    """One (merge mode, calc mode) combination and its kernel.

    elementwise: result[i] depends only on a[i], b[i], c[i] (and the key), so the engine may call
        ``fn`` on aligned flat chunks with ``ctx.out`` set to a chunk of the destination.
    prepass / finalize: cosine statistics. ``prepass(a, b)`` returns a 1-D tensor of values for one
        key; ``finalize([values, ...])`` turns all keys' values into the ``ctx.stats`` object.
        ``keystats(a, b)`` (optional) returns (values, per-key data) for the engine's statistics
        pass; ``finalize(values, per_key)`` then keeps the per-key data for the kernel.
    skips_vae: keys of the VAE (``first_stage_model``) keep A (cosine modes).
    rowwise: the result is elementwise across rows of a 2-D view, so the engine may call ``fn`` on
        chunks of whole rows: "dim0" = (dim 0, rest) (per-column data shared by all rows),
        "last" = (rest, last dim) (every row on its own). None: whole tensors only.
    uses_key: the kernel's result depends on ``ctx.key`` (the engine never batches its keys).
    halo: with rowwise "dim0": a row of the result depends on input rows up to `halo` away (the
        engine hands the kernel chunks of rows plus that many neighbours and keeps the chunk's own).
    out_aliases_a: the kernel's result is the same when ``ctx.out`` is ``a`` itself (it reads a[i]
        only before writing out[i]), so the engine may convert A straight into the destination.
    bound: ``bound(alpha, beta, gamma, mags) -> float``, an upper bound on |result| given each
        input's largest magnitude (``mags``: slot → max |x|, inf when the input holds NaN/inf), in
        exact arithmetic (the caller adds a margin for the kernel's float32 rounding,
        merger.livegroups.SLACK); NaN or inf when nothing can be promised. A live
        re-merge whose inputs' magnitudes are known skips the NaN/overflow check of a result whose
        bound the output dtype holds (merger.livegroups). None: the result is always checked.
    multi: set for the multi-model modes (A + fine-tunes B…F), whose kernels take a list of models
        and are run through it instead of ``fn(a, b, c, …)``.
    """

    mode: str
    calc: str
    fn: Callable[..., torch.Tensor]
    needs_c: bool
    uses_beta: bool
    uses_gamma: bool
    elementwise: bool
    prepass: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    finalize: Callable[[list], object] | None = None
    skips_vae: bool = False
    keystats: Callable[[torch.Tensor, torch.Tensor], tuple] | None = None
    rowwise: str | None = None
    uses_key: bool = False
    halo: int = 0
    heavy: bool = False         # no method needs worker processes any more (kept: callers read it)
    check: Callable[[float, float, float], None] | None = None
    summary: str = ""
    multi: object | None = None    # merger.methods.multi.MultiKernel for the multi-model modes
    out_aliases_a: bool = False
    bound: Callable[[float, float, float, dict], float] | None = None

    def validate(self, alpha: float, beta: float, gamma: float) -> None:
        """Raise AlloyError when a ratio is not a finite number or is out of this method's range."""
        for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise AlloyError(f"{name} must be a finite number for {self.calc} merges, not {v!r}.")
        if self.check is not None:
            self.check(float(alpha), float(beta), float(gamma))

    def __call__(self, a, b=None, c=None, *, alpha=0.5, beta=0.25, gamma=0.3, ctx=None):
        return self.fn(a, b, c, alpha=alpha, beta=beta, gamma=gamma,
                       ctx=ctx if ctx is not None else KeyContext())


def emit(result: torch.Tensor, ctx: KeyContext) -> torch.Tensor:
    """Return `result`, or copy it into ``ctx.out`` (and return that) when a buffer is given."""
    out = ctx.out
    if out is None or out is result:
        return result
    out.copy_(result)
    return out


def copy_of(x: torch.Tensor, ctx: KeyContext) -> torch.Tensor:
    """An unaliased copy of `x` (in ``ctx.out`` when given): kernels never hand back their inputs."""
    if ctx.out is not None:
        ctx.out.copy_(x)
        return ctx.out
    return x.clone()
