"""smoothAdd's filters as tensor operations on the merge device (CPU or CUDA), no SciPy:

* `median3(x)`: median over the 3-wide window along every axis, SciPy's ``median_filter(x, size=3)``
  with mode "reflect" (the border value repeats: d c b a | a b c d | d c b a). Exact: it only
  takes minima and maxima, so the result equals SciPy's bit for bit.
* `gaussian(x)`: SciPy's ``gaussian_filter(x, sigma=1)`` (truncate 4, mode "reflect"), one axis
  after the other in axis order, each a 9-tap convolution in x's dtype (SciPy sums in float64 and
  rounds each pass to float32: the results agree within float32 rounding).

Axes of size 1 are skipped (a window there repeats one value: neither filter changes anything).
The median runs the comparator programs of `merger.methods.sortnet` one axis ("level") at a time
over chunks of the tensor, so the memory it needs is a few dozen chunk-sized buffers. Levels run
biggest axis first; the tensor is viewed so that the last levels' (small) axes are outermost in
memory, which keeps every slice the programs read contiguous in long runs."""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch
import torch.nn.functional as F

from .sortnet import level_types, median_programs

# Elements per chunk (one buffer of the median's working set): large enough that a torch call's
# fixed cost is small against its work, small enough that the working set stays in cache (CPU).
# On the CPU no single operation exceeds SEGMENT elements, below torch's threshold for splitting
# an operation across its threads: the chunks run on THREADS Python threads instead (operations
# release the GIL), which does not oversubscribe the cores when the machine is busy.
CHUNK = {"cpu": 3 << 15, "cuda": 1 << 22}
SEGMENT = {"cpu": 1 << 15, "cuda": 1 << 40}
THREADS = int(os.environ.get("ALLOY_MEDIAN_THREADS", "0")) or min(2, os.cpu_count() or 1)
_BIG = 4   # axes at least this long are split into chunks (with a one-row halo)
_RUN = 16  # most positions of trailing short axes filtered by one Kronecker matrix


# ---- median ------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _code(kinds: tuple):
    """Per level and window type: the program as (is_max, a, b, dst) over one register list
    [inputs of label −1, 0, +1 (ranks in order), temporaries, outputs], and the register count."""
    levels = median_programs(kinds)
    out = []
    for lv, (progs, needed) in enumerate(levels):
        in_ranks = levels[lv - 1][1] if lv else (0,)
        n_in = len(in_ranks)
        base = {-1: 0, 0: n_in, 1: 2 * n_in}
        rank_at = {r: i for i, r in enumerate(in_ranks)}
        per_type = {}
        for wtype, prog in progs.items():
            temps = 3 * n_in
            outs = temps + prog.n_temps

            def reg(ref):
                if ref[0] == "in":
                    return base[ref[1]] + rank_at[ref[2]]
                return (temps if ref[0] == "t" else outs) + ref[1]
            ops = tuple((is_max, reg(a), reg(b), reg(dst)) for is_max, dst, a, b in prog.ops)
            copies = tuple((reg(dst), reg(src)) for dst, src in prog.copies)
            per_type[wtype] = (ops, copies, prog.n_temps)
        out.append((per_type, len(needed)))
    return tuple(out)


def _segments(n: int, lo: int, hi: int, origin: int):
    """(window type, first position, count, input start) of output positions [lo, hi) along an
    axis of n positions whose input buffer starts at position `origin`."""
    segs = []
    for wtype in level_types(n):
        s, t = {"first": (0, 1), "last": (n - 1, n), "mid": (1, n - 1)}[wtype]
        s, t = max(s, lo), min(t, hi)
        if s < t:
            segs.append((wtype, s, t - s, s - origin))
    return segs


def _run(code, copies, regs) -> None:
    mn, mx = torch.minimum, torch.maximum
    for is_max, a, b, dst in code:
        (mx if is_max else mn)(regs[a], regs[b], out=regs[dst])
    for dst, src in copies:
        regs[dst].copy_(regs[src])


class _Work:
    """Reused buffers of one median3 call: ping-pong level stacks and temporaries."""

    def __init__(self, dtype, device):
        self.dtype, self.device, self.bufs = dtype, device, {}

    def take(self, name: str, shape) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < n:
            buf = self.bufs[name] = torch.empty(n, dtype=self.dtype, device=self.device)
        return buf[:n].view(shape)


_LOCAL = threading.local()


def _work(dtype, device) -> _Work:
    """This thread's CPU buffers for `dtype`, kept between calls (about 30 MiB): they grow to the
    largest chunk once instead of being allocated and freed per call, which fragments the heap."""
    if torch.device(device).type != "cpu":
        return _Work(dtype, device)           # the CUDA allocator reuses memory by itself
    table = getattr(_LOCAL, "work", None)
    if table is None:
        table = _LOCAL.work = {}
    key = (dtype, str(device))
    if key not in table:
        table[key] = _Work(dtype, device)
    return table[key]


def _median_chunk(y, out_y, kinds, chunk_axis, r0, r1, work) -> None:
    """Median of rows [r0, r1) along `chunk_axis` of the layout view y into out_y."""
    d = y.dim()
    code = _code(kinds)
    n_c = y.shape[chunk_axis] if chunk_axis is not None else 0
    e0, e1 = (max(r0 - 1, 0), min(r1 + 1, n_c)) if chunk_axis is not None else (0, 0)
    cur = y.narrow(chunk_axis, e0, e1 - e0) if chunk_axis is not None else y
    stack = work.take("s0", (1, *cur.shape))
    stack[0].copy_(cur)
    for lv in range(d):
        axis = d - 1 - lv                           # layout axis of this level
        n = y.shape[axis]
        if axis == chunk_axis:
            lo, hi, origin = r0, r1, e0
        else:
            lo, hi, origin = 0, n, 0
        per_type, n_out = code[lv]
        shape = list(stack.shape[1:])
        shape[axis] = hi - lo
        new = work.take("s%d" % ((lv + 1) % 2), (n_out, *shape))
        per_position = math.prod(shape) // max(1, shape[axis])
        step = max(1, SEGMENT.get(y.device.type, SEGMENT["cuda"]) // max(1, per_position))
        segments = _segments(n, lo, hi, origin)
        if axis != chunk_axis and n >= 3 and 2 <= step:
            _run_borders(stack, new, axis, n, per_type["first"], work)
            segments = [seg for seg in segments if seg[0] == "mid"]
        for wtype, first, total, in_first in segments:
            ops, copies, n_temps = per_type[wtype]
            for off in range(0, total, step):          # pieces of at most SEGMENT elements
                start, count, in_start = first + off, min(step, total - off), in_first + off
                ins = _label_views(stack, axis, in_start, count, wtype)
                seg_shape = list(shape)
                seg_shape[axis] = count
                temps = work.take("t", (max(n_temps, 1), *seg_shape)).unbind(0)[:n_temps]
                outs = new.narrow(1 + axis, start - lo, count).unbind(0)
                _run(ops, copies, [*ins, *temps, *outs])
        stack = new
    out_y.copy_(stack[0]) if chunk_axis is None else out_y.narrow(chunk_axis, r0, r1 - r0).copy_(stack[0])


def _run_borders(stack, new, axis: int, n: int, program, work) -> None:
    """Both borders of an axis of n ≥ 3 positions in one pass: position 0 reads (x0, x0, x1) and
    position n−1 reads (x[n−1], x[n−1], x[n−2]), the same program (see sortnet.level_program) over
    the views {0, n−1} (label 0) and {1, n−2} (label +1)."""
    ops, copies, n_temps = program
    lead = (slice(None),) * (1 + axis)
    border = stack[lead + (slice(0, n, n - 1),)]
    if n == 3:
        inner = stack.narrow(1 + axis, 1, 1).expand(border.shape)
    else:
        inner = stack[lead + (slice(1, n - 1, n - 3),)]
    seg_shape = list(border.shape[1:])
    temps = work.take("t", (max(n_temps, 1), *seg_shape)).unbind(0)[:n_temps]
    regs = [*border.unbind(0), *border.unbind(0), *inner.unbind(0), *temps,
            *new[lead + (slice(0, n, n - 1),)].unbind(0)]
    _run(ops, copies, regs)


def _label_views(stack, axis, in_start, count, wtype) -> list:
    """Input registers for labels −1, 0, +1 (a label the window type does not read gets the
    label-0 views as placeholders, never used)."""
    size = stack.shape[1 + axis]
    views = []
    for delta in (-1, 0, 1):
        s = in_start + delta
        if s < 0 or s + count > size:
            s = in_start
        views.extend(stack.narrow(1 + axis, s, count).unbind(0))
    return views


def median3(x: torch.Tensor) -> torch.Tensor:
    """3-wide median along every axis (SciPy ``median_filter(size=3, mode="reflect")``), a new tensor."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    axes = [a for a in range(x.dim()) if x.shape[a] > 1]
    if not axes or x.numel() == 0:
        return out.copy_(x)
    order = sorted(axes, key=lambda a: (-x.shape[a], a))          # level order: biggest axis first
    perm = order[::-1] + [a for a in range(x.dim()) if a not in axes]
    pick = (slice(None),) * len(axes) + (0,) * (x.dim() - len(axes))
    y, out_y = x.permute(perm)[pick], out.permute(perm)[pick]
    kinds = tuple(2 if y.shape[len(axes) - 1 - lv] == 2 else 3 for lv in range(len(axes)))
    big = [j for j in range(y.dim()) if y.shape[j] >= _BIG]
    chunk_axis = big[0] if big else None
    work = _work(x.dtype, x.device)
    if chunk_axis is None:
        _median_chunk(y, out_y, kinds, None, 0, 0, work)
        return out
    row = max(1, y.numel() // y.shape[chunk_axis])
    step = max(1, CHUNK.get(x.device.type, CHUNK["cuda"]) // row)
    starts = list(range(0, y.shape[chunk_axis], step))
    workers = THREADS if x.device.type == "cpu" and len(starts) > 1 else 1
    if workers <= 1:
        for r0 in starts:
            _median_chunk(y, out_y, kinds, chunk_axis, r0, min(r0 + step, y.shape[chunk_axis]), work)
        return out

    def part(w: int) -> None:
        mine = _work(x.dtype, x.device)
        for r0 in starts[w::workers]:
            _median_chunk(y, out_y, kinds, chunk_axis, r0, min(r0 + step, y.shape[chunk_axis]), mine)
    list(_pool(workers).map(part, range(workers)))
    return out


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A lasting pool of `workers` threads (idle threads cost nothing; making them per call does)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="alloy-median")
        return _POOLS[workers]


# ---- Gaussian ----------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def gaussian_weights(sigma: float = 1.0, truncate: float = 4.0) -> tuple:
    """SciPy's kernel: exp(−t²/2σ²) for |t| ≤ radius = int(truncate·σ + 0.5), normalised (float64)."""
    radius = int(truncate * sigma + 0.5)
    w = [math.exp(-0.5 * t * t / (sigma * sigma)) for t in range(-radius, radius + 1)]
    total = math.fsum(w)
    return tuple(v / total for v in w)


def _reflect(i: int, n: int) -> int:
    """SciPy "reflect" index: … 1 0 | 0 1 … n−1 | n−1 n−2 … (period 2n)."""
    i %= 2 * n
    return i if i < n else 2 * n - 1 - i


@lru_cache(maxsize=None)
def _folded(n: int, weights: tuple) -> torch.Tensor:
    """The n×n matrix (float64) of the 1-D filter with the reflect border folded in (short axes)."""
    r = len(weights) // 2
    m = [[0.0] * n for _ in range(n)]
    for p in range(n):
        for t in range(-r, r + 1):
            m[p][_reflect(p + t, n)] += weights[t + r]
    return torch.tensor(m, dtype=torch.float64)


@lru_cache(maxsize=64)
def _matrix(sizes: tuple, weights: tuple, dtype, device: str) -> torch.Tensor:
    """The transposed Kronecker product of the axes' matrices: a positive size n is a filtered axis
    (its folded matrix), a negative size −n an axis of n positions left alone (identity)."""
    k = torch.ones(1, 1, dtype=torch.float64)
    for n in sizes:
        k = torch.kron(k, _folded(n, weights) if n > 0 else torch.eye(-n, dtype=torch.float64))
    return k.T.contiguous().to(device=device, dtype=dtype)


def _small_axes(y: torch.Tensor, axes: list, weights: tuple) -> torch.Tensor:
    """Short axes (≤ 2·radius + 1): multiply by their folded matrices. A trailing run of them with
    at most `_RUN` positions in all (a conv kernel's 3×3) is one product with the Kronecker matrix;
    any other short axis is a batched product along that axis (no copies to move it)."""
    d, dev = y.dim(), str(y.device)
    tail = d
    while tail > 0 and (tail - 1 in axes or y.shape[tail - 1] == 1):
        tail -= 1
    run = [a for a in range(tail, d) if a in axes]
    if not run or math.prod(y.shape[tail:]) > _RUN:
        run = []
    else:
        k = _matrix(tuple(y.shape[a] if a in run else -y.shape[a] for a in range(tail, d)), weights, y.dtype, dev)
        y = (y.reshape(-1, k.shape[0]) @ k).reshape(y.shape)
    for a in axes:
        if a in run:
            continue
        k = _matrix((y.shape[a],), weights, y.dtype, dev)          # transposed: y_last @ k
        pre, n = math.prod(y.shape[:a]), y.shape[a]
        post = y.numel() // (pre * n)
        if post == 1:
            y = (y.reshape(pre, n) @ k).reshape(y.shape)
        else:
            y = torch.matmul(k.T, y.reshape(pre, n, post)).reshape(y.shape)
    return y


def _big_axis(y: torch.Tensor, axis: int, weights: tuple) -> torch.Tensor:
    """The 1-D filter along a long axis: a depthwise convolution over the trailing positions as
    channels when there are several (channels-last view, no copy), over the leading ones when the
    axis is the last, else shifted adds."""
    r = len(weights) // 2
    pre, n = math.prod(y.shape[:axis]), y.shape[axis]
    post = y.numel() // max(1, pre * n)
    y3 = y.reshape(pre, n, post)
    xp = torch.cat([y3[:, :r].flip(1), y3, y3[:, n - r:].flip(1)], dim=1)
    w = torch.tensor(weights, dtype=torch.float64).to(device=y.device, dtype=y.dtype)
    if post >= 8:
        img = xp.view(pre, n + 2 * r, 1, post).permute(0, 3, 1, 2)
        out = F.conv2d(img, w.view(1, 1, -1, 1).expand(post, 1, -1, 1).contiguous(), groups=post)
        return out.permute(0, 2, 3, 1).reshape(y.shape)
    if post == 1 and pre >= 8:           # the last axis: the rows are the channels
        out = F.conv1d(xp.view(1, pre, n + 2 * r), w.view(1, 1, -1).expand(pre, 1, -1).contiguous(), groups=pre)
        return out.reshape(y.shape)
    out = torch.mul(xp[:, r:r + n], weights[r])
    tmp = torch.empty_like(out)
    for t in range(1, r + 1):
        torch.add(xp[:, r - t:r - t + n], xp[:, r + t:r + t + n], out=tmp)
        out.add_(tmp, alpha=weights[r + t])
    return out.reshape(y.shape)


def gaussian(x: torch.Tensor, sigma: float = 1.0, truncate: float = 4.0) -> torch.Tensor:
    """SciPy ``gaussian_filter(x, sigma, truncate=truncate, mode="reflect")`` in x's dtype, a new
    tensor. (The axes are filtered in another order than SciPy's: the filters commute.)"""
    weights = gaussian_weights(float(sigma), float(truncate))
    limit = len(weights)
    y = x.contiguous()
    small = [a for a in range(x.dim()) if 1 < x.shape[a] <= limit]
    if small:
        y = _small_axes(y, small, weights)
    for a in range(x.dim()):
        if x.shape[a] > limit:
            y = _big_axis(y, a, weights)
    return y.clone() if y.data_ptr() == x.data_ptr() else y
