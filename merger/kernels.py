"""How the executor applies a merge method to tensors: chunked through reused buffers, with the
NaN/inf/overflow check of every result batched into one host transfer per flush.

* `merge_span`: elementwise methods over one flat span, which may hold several consecutive keys
  with the same ratios (their inputs and destinations adjacent in memory), in chunks of `CHUNK`.
* `merge_rows`: methods that are elementwise across rows (cosine: dim-0 slices share per-column
  weights; extract: rows along the last dim are independent; smoothAdd: dim-0 slices with a halo of
  rows its filters reach), in row chunks of about `CHUNK` elements.
* `merge_whole`: any method on whole tensors (the rest, §10.5 channel slices, Adjust).

Inputs in the compute dtype on the compute device are read in place and a destination of that
dtype and device is written directly; otherwise chunks go through reused compute-dtype buffers."""
from __future__ import annotations

import bisect
import ctypes
import math

import torch

from .adjust import apply_adjust
from .errors import AlloyError, TensorValueError
from .methods import KeyContext
from .methods.base import memory_order

CHUNK = 1 << 20
ROW_CHUNK = 1 << 17    # rows along the last dim (extract): a dozen passes over each chunk, whose buffers then stay in L2
HALO_CHUNK = 1 << 22
SHORT_ROWS = 8         # rows of a row-wise method at most this long go through column-major buffers   # rows per chunk of methods with a halo: the halo's share of the work stays small
_CHECKABLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_TRIM: list = []


def trim_heap() -> None:
    """Give memory the C heap holds but no longer uses back to the system (glibc's malloc_trim).

    Whole-key and row-chunk kernels free temporaries of many different sizes; glibc keeps those
    in its heap, so without this the resident memory of a long merge creeps up by hundreds of MiB."""
    if not _TRIM:
        try:
            _TRIM.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _TRIM.append(None)
    if _TRIM[0] is not None:
        _TRIM[0](0)


def resolve_device(device: str | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise AlloyError("CUDA was requested but no CUDA device is available; use --device cpu.")
    try:
        return torch.device(device)
    except RuntimeError:
        raise AlloyError(f"Unknown device '{device}'; use cpu, cuda or auto.") from None


class Scratch:
    """Reused compute-dtype chunk buffers (one per input slot, one for the result)."""

    def __init__(self, dtype, device, n=CHUNK):
        self.dtype, self.device, self.n = dtype, torch.device(device), n
        self.t = {}

    def get(self, name: str, n: int) -> torch.Tensor:
        buf = self.t.get(name)
        if buf is None or buf.numel() < n:
            buf = self.t[name] = torch.empty(max(n, self.n), dtype=self.dtype, device=self.device)
        return buf[:n]


def _limit(out_dtype) -> float:
    """The largest magnitude the output dtype holds (fp16, bf16, fp8 …); inf for non-floats."""
    return torch.finfo(out_dtype).max if out_dtype is not None and out_dtype.is_floating_point else math.inf


def _refuse(key: str, finite: bool):
    what = "values too large for the output precision" if finite else "NaN or infinite values"
    raise TensorValueError(key, what)


class FiniteCheck:
    """Refuses NaN/inf in results and values the output dtype cannot hold (fp16 overflow).

    Without `defer` (the CPU) a result is checked when it is added: one sum when the output dtype
    holds every finite value of the result's dtype (a finite sum means no NaN/inf), else (or when
    the sum is not finite) one aminmax pass; no temporaries. With `defer` (a GPU: no wait for the device per key) `add` only records its
    extremes on the device and `flush` moves everything recorded to the host in one transfer per
    kind; a span of several keys records max |x| (NaN counted as inf)
    and where it is, so the key can still be named. Either way the AlloyError names the first bad
    key in the order added (on a GPU: at the latest when `flush` runs)."""

    def __init__(self, defer: bool = False):
        self.defer = defer
        self.single: list = []    # (seq, key, out_dtype, min, max)
        self.spans: list = []     # (seq, keys, starts, out_dtype, max |x|, argmax)
        self.seq = 0

    def __len__(self) -> int:
        return len(self.single) + len(self.spans)

    def add(self, keys, starts, t: torch.Tensor, out_dtype) -> None:
        if t.dtype not in _CHECKABLE or t.numel() == 0:
            return
        self.seq += 1
        if len(keys) == 1:
            t = _dense(t)         # a reduction over a transposed view is an order of magnitude slower
        if not self.defer:
            limit = _limit(out_dtype)
            if limit >= torch.finfo(t.dtype).max and math.isfinite(float(t.sum())):
                return      # a finite sum has no NaN/inf terms, and every finite value fits: no aminmax
            lo, hi = (float(v) for v in torch.aminmax(t))
            if not (-limit <= lo and hi <= limit):
                key = keys[0]
                for k, s, e in zip(keys, starts, [*starts[1:], t.numel()]):
                    lo_k, hi_k = (float(v) for v in torch.aminmax(t.reshape(-1)[max(s, 0):e])) if e > max(s, 0) \
                        else (0.0, 0.0)
                    if not (-limit <= lo_k and hi_k <= limit):
                        key, lo, hi = k, lo_k, hi_k
                        break
                _refuse(key, math.isfinite(lo) and math.isfinite(hi))
            return
        if len(keys) == 1:
            self.single.append((self.seq, keys[0], out_dtype, *torch.aminmax(t)))
            return
        mag = torch.nan_to_num(t.abs(), nan=math.inf, posinf=math.inf)
        self.spans.append((self.seq, keys, starts, out_dtype, mag.max(), mag.argmax()))

    def flush(self) -> None:
        bad = []
        if self.single:
            ext = torch.stack([x for s in self.single for x in s[3:]]).tolist()
            for (seq, key, dtype, _, _), lo, hi in zip(self.single, ext[0::2], ext[1::2]):
                limit = _limit(dtype)
                if not (-limit <= lo and hi <= limit):
                    bad.append((seq, key, math.isfinite(lo) and math.isfinite(hi)))
        if self.spans:
            mags = torch.stack([s[4] for s in self.spans]).tolist()
            where = torch.stack([s[5] for s in self.spans]).tolist()
            for (seq, keys, starts, dtype, _, _), mag, i in zip(self.spans, mags, where):
                if not mag <= _limit(dtype):
                    bad.append((seq, keys[bisect.bisect_right(starts, i) - 1], math.isfinite(mag)))
        self.single, self.spans = [], []
        if bad:
            _, key, finite = min(bad)
            _refuse(key, finite)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """The same elements as a contiguous view when t is a permutation of a dense block (the
    column-major chunks of short rows), else t."""
    if t.is_contiguous():
        return t
    v = t.permute(memory_order(t))
    return v if v.is_contiguous() else t


def _chunked(fn, srcs: dict, dst: torch.Tensor, *, alpha, beta, gamma, ctx, scratch, check, keys, starts,
             out_dtype, rows: int = 0, columns: bool = False, alias_a: bool = False) -> None:
    """Apply fn over aligned chunks of the flat (rows == 0) or 2-D (rows-per-chunk) inputs.
    `columns`: the chunk buffers hold 2-D chunks column by column (short rows: each column is one
    contiguous vector for the kernel, which sees the same values through a transposed view).
    `alias_a` (the kernel allows ctx.out to be `a`, Method.out_aliases_a): when the result goes
    straight into `dst`, A is converted into the destination chunk itself (one buffer less)."""
    cd, dev = scratch.dtype, scratch.device
    n = dst.shape[0]
    step = rows or CHUNK
    direct_out = dst.dtype == cd and dst.device == dev and not columns

    def buffer(slot, shape):
        if columns:
            return scratch.get(slot, math.prod(shape)).view(shape[1], shape[0]).t()
        return scratch.get(slot, math.prod(shape)).view(shape)

    def piece(slot, v):
        if v.dtype == cd and v.device == dev and not columns:
            return v
        return buffer(slot, v.shape).copy_(v)

    for s in range(0, n, step):
        e = min(n, s + step)
        part = dst[s:e] if (s, e) != (0, n) else dst
        out = part if direct_out else buffer("out", part.shape)
        ctx.out, ctx.scratch = out, scratch
        c = srcs.get("c")
        a = srcs["a"][s:e]
        a = out.copy_(a) if alias_a and direct_out and (a.dtype != cd or a.device != dev) else piece("a", a)
        res = fn(a, piece("b", srcs["b"][s:e]), None if c is None else piece("c", c[s:e]),
                 alpha=alpha, beta=beta, gamma=gamma, ctx=ctx)
        if check is not None:
            check.add(keys, [x - s for x in starts] if len(keys) > 1 else starts, res, out_dtype)
        if not direct_out or res.data_ptr() != out.data_ptr():
            part.copy_(res)
    ctx.out = ctx.scratch = None


def merge_span(method, srcs: dict, dst: torch.Tensor, *, alpha, beta, gamma, ctx, scratch, check, keys,
               starts, out_dtype, chunk: int = 0) -> None:
    """Elementwise `method` over flat spans srcs[slot] → dst (keys[i] starts at element starts[i]),
    in pieces of `chunk` elements (default CHUNK). `check` None: the caller proved the results
    finite and in range (merger.livegroups.proved)."""
    _chunked(method.fn, srcs, dst, alpha=alpha, beta=beta, gamma=gamma, ctx=ctx, scratch=scratch, check=check,
             keys=keys, starts=starts, out_dtype=out_dtype, rows=chunk, alias_a=method.out_aliases_a)


def row_view(method, t: torch.Tensor) -> torch.Tensor:
    """The view a row-wise method works on: rows along the last dim as a 2-D view, or the tensor
    itself (rows = its dim-0 slices)."""
    return t.reshape(-1, t.shape[-1]) if method.rowwise == "last" else t


def merge_rows(method, kp, t: dict, dst: torch.Tensor, *, gamma, stats, scratch, check) -> None:
    """Row-wise `method` on one key, in chunks of whole rows through reused buffers. A method with
    a halo h gets h more rows on each side of a chunk (where the tensor has them) and only the
    chunk's own rows of its result are kept (smoothAdd: its filters reach 5 rows)."""
    srcs = {s: row_view(method, v) for s, v in t.items()}
    d2 = row_view(method, dst)
    width = max(1, d2[0].numel()) if d2.shape[0] else 1
    ctx = KeyContext(key=kp.key, stats=stats)
    halo = method.halo
    if not halo:
        limit = ROW_CHUNK if method.rowwise == "last" else CHUNK
        _chunked(method.fn, srcs, d2, alpha=kp.alpha, beta=kp.beta, gamma=gamma, ctx=ctx, scratch=scratch,
                 check=check, keys=[kp.key], starts=[0], out_dtype=kp.out_dtype, rows=max(1, limit // width),
                 columns=method.rowwise == "last" and d2.dim() == 2 and 1 < width <= SHORT_ROWS)
        return
    n = d2.shape[0]
    step = max(1, HALO_CHUNK // width)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        lo, hi = max(0, r0 - halo), min(n, r1 + halo)
        part = {s: scratch.get(s, v[lo:hi].numel()).view(v[lo:hi].shape).copy_(v[lo:hi]) for s, v in srcs.items()}
        res = method.fn(part["a"], part["b"], part.get("c"), alpha=kp.alpha, beta=kp.beta, gamma=gamma, ctx=ctx)
        own = res[r0 - lo:r1 - lo]
        check.add([kp.key], [0], own, kp.out_dtype)
        d2[r0:r1].copy_(own)


def merge_whole(method, kp, t: dict, *, compute, gamma, adjust=None, arch=None, stats=None, device="cpu",
                check=None) -> torch.Tensor:
    """Whole-tensor kernel application (a new tensor in the compute dtype)."""
    x = {s: v.to(device=device, dtype=compute) for s, v in t.items()}
    ctx = KeyContext(key=kp.key, stats=stats)
    if kp.channels:
        sl = (slice(None), slice(0, kp.channels))
        res = x["a"].clone()
        res[sl] = method.fn(x["a"][sl], x["b"][sl], x["c"][sl] if "c" in x else None,
                            alpha=kp.alpha, beta=kp.beta, gamma=gamma, ctx=ctx)
    else:
        res = method.fn(x["a"], x["b"], x.get("c"), alpha=kp.alpha, beta=kp.beta, gamma=gamma, ctx=ctx)
    if kp.adjust:
        res = apply_adjust(kp.key, res, adjust, arch)
    if check is not None:
        check.add([kp.key], [0], res, kp.out_dtype)
    return res
