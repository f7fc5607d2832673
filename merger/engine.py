"""The executor: streams every planned key from the sources through its kernel into a sink.

Memory stays bounded by a few tensors: keys are read in A's file order on a helper thread, in
batches of consecutive keys (up to `BATCH_BYTES`, or one bigger key) packed into reused buffers,
while the previous batch is computed. Within a batch, consecutive keys that share their ratios and
lie next to each other in memory, in every input and in the sink's destination (a file's output
buffer), form one span: the method runs over the span in `CHUNK`-element pieces as if it were one
tensor, and copied keys are one copy. So tiny keys cost a few operations per batch, not per key,
and big keys go through reused float32 chunk buffers (`merger.kernels`). The NaN/inf check records
every result's extremes without waiting for the device and looks at them once per
`CHECK_EVERY` records and before the sink finishes (a failure aborts the sink: nothing is kept)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import torch

from .contracts import Report, Sink
from .errors import Interrupted, TensorValueError
from .kernels import FiniteCheck, Scratch, _limit, merge_rows, merge_span, merge_whole, resolve_device, trim_heap
from .methods import KeyContext
from .multiexec import derived_hit, merge_multi
from .plan import SLOTS, KeyPlan, Plan, inputs_text
from .precision import full_float32

__all__ = ["execute", "Report", "Sink", "resolve_device", "BATCH_BYTES"]

BATCH_BYTES = 4 << 20
CHECK_EVERY = 1024
TRIM_ELEMENTS = 1 << 20


def _needed_slots(plan: Plan, kp) -> tuple:
    if kp.action == "merge":
        return plan.slots
    if kp.action == "stats":
        return ("a", "b")
    return {"keep_a": ("a",), "copy_b": ("b",)}.get(kp.action, ())


def _align(n: int, k: int) -> int:
    return (n + k - 1) // k * k


class _Reader:
    """Reads batches of consecutive items on a helper thread into two sets of reused buffers,
    one batch ahead of the caller. Sources that hand out shared tensors (the cache) get no buffer;
    a key bigger than a batch is read into memory of its own, freed once it is merged (so the
    buffers stay at BATCH_BYTES instead of two copies of the biggest key per source)."""

    def __init__(self, plan: Plan, sources: dict, items: list, derived=None):
        self.plan, self.sources, self.items, self.derived = plan, sources, items, derived
        buffered = [s for s in SLOTS if s in sources and not getattr(sources[s], "shared_tensors", False)]
        self.batches, self.layout, sizes = [], [], {s: 0 for s in buffered}
        start, used, out = 0, {s: 0 for s in buffered}, 0
        offsets = []
        for i, kp in enumerate(items):
            need = {}
            for slot in _needed_slots(plan, kp):
                if slot in used:
                    info = sources[slot].info(kp.key)
                    need[slot] = (_align(used[slot], info.dtype.itemsize), info.nbytes)
            nout = _nbytes(kp)
            full = any(off + n > BATCH_BYTES for off, n in need.values()) or out + nout > BATCH_BYTES
            if full and i > start:
                self._close(start, i, offsets, used, sizes)
                start, used, out, offsets = i, {s: 0 for s in buffered}, 0, []
                need = {slot: (0, n) for slot, (_, n) in need.items()}
            need = {slot: on for slot, on in need.items() if on[1] <= BATCH_BYTES}   # bigger: own memory
            offsets.append(need)
            for slot, (off, n) in need.items():
                used[slot] = off + n
            out += nout
        if start < len(items):
            self._close(start, len(items), offsets, used, sizes)
        self.sets = [{s: torch.empty(n, dtype=torch.uint8) for s, n in sizes.items() if n} for _ in range(2)]
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alloy-read")

    def _close(self, start, end, offsets, used, sizes) -> None:
        self.batches.append((start, end))
        self.layout.append(offsets)
        for slot, n in used.items():
            sizes[slot] = max(sizes[slot], n)

    def _read(self, b: int) -> list:
        start, end = self.batches[b]
        bufs = self.sets[b % 2]
        out = []
        for kp, offsets in zip(self.items[start:end], self.layout[b]):
            t = {}
            hit, slots = derived_hit(self.plan, kp, self.derived, _needed_slots(self.plan, kp))
            if hit is not None:                  # a multi-model key's alpha-independent step, cached
                t["derived"] = hit
            for slot in slots:
                if slot in offsets:
                    off, n = offsets[slot]
                    t[slot] = self.sources[slot].read(kp.key, bufs[slot][off:off + n])
                else:
                    t[slot] = self.sources[slot].read(kp.key)
            if kp.action == "vae":
                vsrc, vkey = self.plan.vae[kp.key]
                t["v"] = vsrc.read(vkey)
            out.append((kp, t))
        return out

    def __iter__(self):
        pending = self.pool.submit(self._read, 0) if self.batches else None
        for b in range(len(self.batches)):
            batch = pending.result()
            pending = self.pool.submit(self._read, b + 1) if b + 1 < len(self.batches) else None
            yield batch

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _nbytes(kp) -> int:
    if kp.action == "stats":
        return 0
    n = 1
    for d in kp.shape:
        n *= int(d)
    return n * kp.out_dtype.itemsize


def _adjacent(x: torch.Tensor, y: torch.Tensor) -> bool:
    """y starts where x ends, in the same storage (so both are one flat span)."""
    return (x.dtype == y.dtype and x.device == y.device and x.is_contiguous() and y.is_contiguous()
            and y.storage_offset() == x.storage_offset() + x.numel()
            and x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr())


def _span(tensors: list) -> torch.Tensor:
    """The flat view over adjacent tensors."""
    first = tensors[0]
    return torch.as_strided(first, (sum(t.numel() for t in tensors),), (1,), first.storage_offset())


def _plain(kp, tensors) -> torch.Tensor:
    """The tensor of a key that is copied, not merged."""
    if kp.action == "clip_ids":
        return torch.arange(kp.shape[-1], dtype=kp.out_dtype).reshape(kp.shape)
    return tensors[{"keep_a": "a", "copy_b": "b", "vae": "v"}[kp.action]]


class _Executor:
    def __init__(self, plan: Plan, sink: Sink, device, report: Report, progress, should_stop, total: int,
                 derived=None):
        self.plan, self.sink, self.device, self.report, self.derived = plan, sink, device, report, derived
        self.progress, self.should_stop, self.total, self.done = progress, should_stop, total, 0
        self.scratch = Scratch(plan.compute_dtype, device)
        self.check = FiniteCheck(defer=torch.device(device).type != "cpu")
        self.ctx = KeyContext(key="")

    def _kind(self, kp, t) -> str:
        m = self.plan.method
        if kp.action in ("keep_a", "copy_b"):
            return "copy"
        if kp.action != "merge":
            return "plain"
        if m.multi is not None:
            return "multi"
        if kp.channels or kp.adjust or t["a"].dim() == 0:
            return "whole"
        return "ew" if m.elementwise else ("rows" if m.rowwise else "whole")

    def _joins(self, prev, item, kind) -> bool:
        (pk, pt, ptg), (kp, t, tg) = prev, item
        if tg is None or ptg is None or not _adjacent(ptg, tg):
            return False
        if kind == "copy":
            slot = "a" if kp.action == "keep_a" else "b"
            return kp.action == pk.action and _adjacent(pt[slot], t[slot])
        return (not self.plan.method.uses_key and kp.alpha == pk.alpha and kp.beta == pk.beta
                and all(_adjacent(pt[s], t[s]) for s in t))

    def run_batch(self, batch: list) -> None:
        items = [(kp, t, self.sink.target(kp)) for kp, t in batch]
        i = 0
        while i < len(items):
            kp, t, tg = items[i]
            kind = self._kind(kp, t)
            j = i + 1
            if kind in ("copy", "ew") and tg is not None:
                while j < len(items) and self._kind(items[j][0], items[j][1]) == kind \
                        and self._joins(items[j - 1], items[j], kind):
                    j += 1
            if j > i + 1:
                self._run_span(kind, items[i:j])
            else:
                items[i] = (kp, t, self._single(kind, kp, t, tg))
            for kp, _, tg in items[i:j]:
                self._put(kp, tg)
            i = j
        if len(self.check) >= CHECK_EVERY:
            self.check.flush()

    def _run_span(self, kind: str, items: list) -> None:
        dst = _span([tg for _, _, tg in items])
        if kind == "copy":
            slot = "a" if items[0][0].action == "keep_a" else "b"
            src = _span([t[slot] for _, t, _ in items])
            starts = [0]
            for _, t, _ in items[:-1]:
                starts.append(starts[-1] + t[slot].numel())
            self._check_narrowing([kp.key for kp, _, _ in items], starts, src, items[0][0].out_dtype)
            dst.copy_(src)
            return
        kp0 = items[0][0]
        starts, n = [], 0
        for kp, t, _ in items:
            starts.append(n)
            n += t["a"].numel()
        srcs = {s: _span([t[s] for _, t, _ in items]) for s in items[0][1]}
        self.ctx.key, self.ctx.stats = kp0.key, None
        merge_span(self.plan.method, srcs, dst, alpha=kp0.alpha, beta=kp0.beta, gamma=self.plan.recipe.gamma,
                   ctx=self.ctx, scratch=self.scratch, check=self.check, keys=[kp.key for kp, _, _ in items],
                   starts=starts, out_dtype=kp0.out_dtype)

    def _single(self, kind: str, kp, t, tg):
        """Produce one key; returns what to put (the target, or a result in kp.out_dtype)."""
        plan = self.plan
        if kind in ("copy", "plain"):
            res = _plain(kp, t)
            self._check_narrowing([kp.key], [0], res, kp.out_dtype)
        elif kind == "multi":
            res = merge_multi(plan, kp, t, tg, self.device, self.derived,
                              lambda key, r, dtype: self.check.add([key], [0], r, dtype))
            if tg is not None and res.data_ptr() == tg.data_ptr():
                return tg
        elif kind in ("ew", "rows"):
            tg = tg if tg is not None else torch.empty(kp.shape, dtype=kp.out_dtype)
            if kind == "ew":
                self.ctx.key, self.ctx.stats = kp.key, None
                merge_span(plan.method, {s: v.reshape(-1) for s, v in t.items()}, tg.reshape(-1), alpha=kp.alpha,
                           beta=kp.beta, gamma=plan.recipe.gamma, ctx=self.ctx, scratch=self.scratch,
                           check=self.check, keys=[kp.key], starts=[0], out_dtype=kp.out_dtype)
            else:
                merge_rows(plan.method, kp, t, tg, gamma=plan.recipe.gamma, stats=getattr(plan, "stats", None),
                           scratch=self.scratch, check=self.check)
                self._trim(t["a"])
            return tg
        else:
            res = merge_whole(plan.method, kp, t, compute=plan.compute_dtype, gamma=plan.recipe.gamma,
                              adjust=plan.adjust, arch=plan.arch, stats=getattr(plan, "stats", None),
                              device=self.device, check=self.check)
            self._trim(t["a"]) if "a" in t else None
        if tg is not None:
            tg.copy_(res)
            return tg
        return res if res.dtype == kp.out_dtype else res.to(kp.out_dtype)

    def _check_narrowing(self, keys, starts, src: torch.Tensor, out_dtype) -> None:
        """A copied tensor saved in a narrower float type (fp32 → fp16/fp8) must fit it as merged ones do."""
        if src.is_floating_point() and out_dtype is not None and out_dtype.is_floating_point \
                and _limit(out_dtype) < _limit(src.dtype):
            self.check.add(keys, starts, src, out_dtype)

    def _trim(self, t: torch.Tensor) -> None:
        """After a key whose kernel made big temporaries on the CPU, return freed heap memory."""
        if self.device.type == "cpu" and t.numel() >= TRIM_ELEMENTS:
            trim_heap()

    def _put(self, kp, tensor) -> None:
        if kp.action == "merge":
            self.report.keys_merged += 1
        else:
            self.report.keys_copied += 1
        self.sink.put(kp, tensor)
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total, kp.key)
        if self.should_stop is not None and self.should_stop():
            raise Interrupted("The merge was stopped; nothing was changed.")


class _StatsItem:
    action = "stats"

    def __init__(self, key: str):
        self.key = key


def _prepass(plan: Plan, sources: dict, device, progress, should_stop) -> None:
    """Cosine modes: global similarity statistics over A and B (§4.2, §20.3), streamed."""
    a, b, arch, m = sources["a"], sources["b"], plan.arch, plan.method
    items = [_StatsItem(k) for k in a.keys()
             if ("model" in k or (k in plan and plan[k].action == "merge")) and k in b
             and not arch.is_vae(k) and tuple(a.info(k).shape) == tuple(b.info(k).shape)]
    values, per_key = [], {}
    reader = _Reader(plan, {"a": a, "b": b}, items)
    try:
        done = 0
        for batch in reader:
            if should_stop is not None and should_stop():
                raise Interrupted("The merge was stopped; nothing was changed.")
            for item, t in batch:
                x, y = t["a"].to(device), t["b"].to(device)
                if m.keystats is not None:
                    v, per_key[item.key] = m.keystats(x, y)
                else:
                    v = m.prepass(x.to(torch.float32), y.to(torch.float32))
                values.append(v)
                done += 1
                if progress:
                    progress(done, len(items), f"statistics {item.key}")
    finally:
        reader.close()
    plan.stats = m.finalize(values, per_key) if m.keystats is not None else m.finalize(values)


@full_float32()
def execute(plan: Plan, sources: dict, sink: Sink, *, device="cpu", progress=None, should_stop=None,
            only_keys=None, derived=None) -> Report:
    """Produce every planned key (or only `only_keys`) through `sink`. Aborts the sink on any error.

    `derived` (optional, `merger.cache.DerivedStore`): where multi-model merges keep and find their
    alpha-independent intermediate tensors, so a sweep over alpha does not redo them."""
    t0 = time.perf_counter()
    device = resolve_device(device)
    report = Report(recipe=plan.recipe)
    work: list[KeyPlan] = [kp for kp in plan.items if only_keys is None or kp.key in only_keys]
    reader = None
    try:
        sink.begin(plan)
        if plan.method.prepass is not None and any(kp.action == "merge" for kp in work):
            _prepass(plan, sources, device, progress, should_stop)
        run = _Executor(plan, sink, device, report, progress, should_stop, len(work), derived)
        if should_stop is not None and should_stop():
            raise Interrupted("The merge was stopped; nothing was changed.")
        reader = _Reader(plan, sources, work, derived)
        for batch in reader:
            run.run_batch(batch)
        run.check.flush()
        report.seconds = time.perf_counter() - t0
        report.keys_written = len(work)
        sink.finish(report)
    except TensorValueError as e:
        sink.abort()
        raise e.with_inputs(inputs_text(sources)) from None
    except BaseException:
        sink.abort()
        raise
    finally:
        if reader is not None:
            reader.close()
    report.seconds = time.perf_counter() - t0
    return report
