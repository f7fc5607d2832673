"""The executor: streams every planned key from the sources through its kernel into a sink.

Memory stays bounded by a few tensors: each source is read key by key (in A's file order) into
reused buffers, elementwise methods run over 1 Mi-element chunks through reused float32 scratch
buffers, and the result is cast straight into the sink's target (a reused output buffer for files,
the parameter itself for a live model). The next key is read by a helper thread while the current
one is computed."""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from . import parallel
from .adjust import apply_adjust
from .errors import AlloyError, Interrupted, TensorValueError
from .methods import KeyContext
from .multiexec import derived_hit, merge_multi
from .plan import SLOTS, KeyPlan, Plan, inputs_text

CHUNK = 1 << 20
_CHECKABLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Sink:
    """Where merged tensors go. Subclasses: `merger.sinks.FileSink`, `merger.live.LiveSink`."""

    def begin(self, plan: Plan) -> None:
        pass

    def target(self, kp: KeyPlan) -> torch.Tensor | None:
        """A destination of kp.shape in the sink's dtype to write into, or None."""
        return None

    def put(self, kp: KeyPlan, tensor: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self, report: "Report") -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass
class Report:
    recipe: object
    seconds: float = 0.0
    keys_merged: int = 0
    keys_copied: int = 0
    keys_written: int = 0
    keys_from_cache: int = 0
    path: str | None = None
    warnings: list = field(default_factory=list)

    def message(self) -> str:
        where = f" → {self.path}" if self.path else ""
        cache = f", {self.keys_from_cache} keys from cache" if self.keys_from_cache else ""
        name = self.recipe.display_name() if self.recipe is not None else "merge"
        return (f"{name}{where}: {self.keys_merged} keys merged, {self.keys_copied} copied{cache} "
                f"in {self.seconds:.1f} s")


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise AlloyError("CUDA was requested but no CUDA device is available; use --device cpu.")
    try:
        return torch.device(device)
    except RuntimeError:
        raise AlloyError(f"Unknown device '{device}'; use cpu, cuda or auto.") from None


class _Buffers:
    """Two sets of reusable read buffers per source slot (one being read, one being computed)."""

    def __init__(self, sizes: dict):
        self.sets = [{s: torch.empty(n, dtype=torch.uint8) for s, n in sizes.items() if n} for _ in range(2)]


class _Scratch:
    """Reused compute-dtype chunk buffers for elementwise kernels."""

    def __init__(self, dtype, device, n=CHUNK):
        self.device = torch.device(device)
        self.t = {name: torch.empty(n, dtype=dtype, device=device) for name in ("a", "b", "c", "out")}


def _needed_slots(plan: Plan, kp: KeyPlan) -> tuple:
    if kp.action == "merge":
        return plan.slots
    return {"keep_a": ("a",), "copy_b": ("b",)}.get(kp.action, ())


def _read(plan: Plan, sources: dict, kp: KeyPlan, bufs: dict, derived=None) -> dict:
    """The source tensors of one key. A multi-model key whose alpha-independent step is in the
    derived cache reads only A (and the fine-tunes when its combine step needs them)."""
    out = {}
    hit, slots = derived_hit(plan, kp, derived, _needed_slots(plan, kp))
    if hit is not None:
        out["derived"] = hit
    for slot in slots:
        out[slot] = sources[slot].read(kp.key, bufs.get(slot))  # no buffer for shared in-memory sources
    if kp.action == "vae":
        vsrc, vkey = plan.vae[kp.key]
        out["v"] = vsrc.read(vkey)
    return out


def _check_finite(key: str, t: torch.Tensor, out_dtype: torch.dtype | None = None) -> None:
    """Refuse NaN/inf in a result, and values the output dtype cannot hold (fp16 overflow).

    One aminmax pass over the compute-dtype result (NaN propagates into it)."""
    if t.dtype not in _CHECKABLE or t.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(t))
    limit = torch.finfo(out_dtype).max if out_dtype is not None and out_dtype.is_floating_point else math.inf
    if not (-limit <= lo and hi <= limit):
        what = "values too large for the output precision" if math.isfinite(lo) and math.isfinite(hi) \
            else "NaN or infinite values"
        raise TensorValueError(key, what)


def _merge_elementwise(plan, kp, t, target, scratch, ctx):
    """Chunked kernel application through reused buffers; the result is cast into the target.

    Inputs already in the compute dtype on the compute device are used in place, and a target of
    that dtype and device is written directly (no scratch copies): a cached fp32 re-merge into an
    fp32 model costs one kernel pass plus the finite check."""
    fn, r, cd = plan.method.fn, plan.recipe, plan.compute_dtype
    flat = {s: v.reshape(-1) for s, v in t.items()}
    direct = {s: v.dtype == cd and v.device == scratch.device for s, v in flat.items()}
    dst = target.reshape(-1)
    direct_out = dst.dtype == cd and dst.device == scratch.device
    n = dst.numel()
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        buf = {}
        for slot, v in flat.items():
            buf[slot] = v[s:e] if direct[slot] else scratch.t[slot][: e - s].copy_(v[s:e])
        out = dst[s:e] if direct_out else scratch.t["out"][: e - s]
        ctx.out = out
        res = fn(buf["a"], buf["b"], buf.get("c"), alpha=kp.alpha, beta=kp.beta, gamma=r.gamma, ctx=ctx)
        _check_finite(kp.key, res, dst.dtype)
        if not direct_out or res.data_ptr() != out.data_ptr():
            dst[s:e].copy_(res)


def merge_whole(method, kp, t, *, compute, gamma, adjust=None, arch=None, stats=None, device="cpu"):
    """Whole-tensor kernel application (non-elementwise methods, §10.5 channel slices, Adjust).

    Pure function of its arguments, so worker processes can run it (see merger.parallel)."""
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
    _check_finite(kp.key, res, kp.out_dtype)
    return res


def _merge_whole(plan, kp, t, device):
    return merge_whole(plan.method, kp, t, compute=plan.compute_dtype, gamma=plan.recipe.gamma,
                       adjust=plan.adjust, arch=plan.arch, stats=getattr(plan, "stats", None), device=device)


def _prepass(plan: Plan, sources: dict, device, progress, should_stop) -> None:
    """Cosine modes: global similarity statistics over A and B (§4.2, §20.3)."""
    a, b, arch = sources["a"], sources["b"], plan.arch
    keys = [k for k in a.keys()
            if ("model" in k or (k in plan and plan[k].action == "merge")) and k in b
            and not arch.is_vae(k) and tuple(a.info(k).shape) == tuple(b.info(k).shape)]
    values = []
    for i, k in enumerate(keys):
        if should_stop is not None and should_stop():
            raise Interrupted("The merge was stopped; nothing was changed.")
        ta = a.read(k).to(device=device, dtype=torch.float32)
        tb = b.read(k).to(device=device, dtype=torch.float32)
        values.append(plan.method.prepass(ta, tb).to("cpu"))
        if progress:
            progress(i + 1, len(keys), f"statistics {k}")
    plan.stats = plan.method.finalize(values)


def _sizes(plan: Plan, sources: dict, work: list) -> dict:
    """Read-buffer size per source slot (none for sources that hand out shared tensors)."""
    sizes = {s: 0 for s in SLOTS if s in sources and not getattr(sources[s], "shared_tensors", False)}
    for kp in work:
        for slot in _needed_slots(plan, kp):
            if slot in sizes:
                sizes[slot] = max(sizes[slot], sources[slot].info(kp.key).nbytes)
    return sizes


def execute(plan: Plan, sources: dict, sink: Sink, *, device="cpu", progress=None, should_stop=None,
            only_keys=None, derived=None) -> Report:
    """Produce every planned key (or only `only_keys`) through `sink`. Aborts the sink on any error.

    `derived` (optional, `merger.cache.DerivedStore`): where multi-model merges keep and find their
    alpha-independent intermediate tensors, so a sweep over alpha does not redo them."""
    t0 = time.perf_counter()
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    report = Report(recipe=plan.recipe)
    work = [kp for kp in plan.items if only_keys is None or kp.key in only_keys]
    bufs = _Buffers(_sizes(plan, sources, work))
    scratch = _Scratch(plan.compute_dtype, device) if plan.method.elementwise else None
    ctx = KeyContext(key="")
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alloy-read")
    keypool = None
    try:
        sink.begin(plan)
        if plan.method.prepass is not None and any(kp.action == "merge" for kp in work):
            _prepass(plan, sources, device, progress, should_stop)
        if parallel.wanted(plan, work):
            keypool = parallel.KeyPool(plan)
        pending = pool.submit(_read, plan, sources, work[0], bufs.sets[0], derived) if work else None
        for i, kp in enumerate(work):
            if should_stop is not None and should_stop():
                raise Interrupted("The merge was stopped; nothing was changed.")
            tensors = pending.result()
            if i + 1 < len(work):
                pending = pool.submit(_read, plan, sources, work[i + 1], bufs.sets[(i + 1) % 2], derived)
            if keypool is None:
                _produce(plan, kp, tensors, sink, scratch, ctx, device, report, derived)
            else:
                merge = kp.action == "merge"
                keypool.add(kp, tensors, merge, None if merge else _plain(kp, tensors))
                for ready_kp, result in keypool.ready():
                    _deliver(sink, ready_kp, result)
                _count(kp, report)
            if progress:
                progress(i + 1, len(work), kp.key)
        if keypool is not None:
            for ready_kp, result in keypool.ready(drain=True):
                _deliver(sink, ready_kp, result)
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
        pool.shutdown(wait=True)
        if keypool is not None:
            keypool.close()
    report.seconds = time.perf_counter() - t0
    return report


def _count(kp, report) -> None:
    if kp.action == "merge":
        report.keys_merged += 1
    else:
        report.keys_copied += 1


def _plain(kp, tensors) -> torch.Tensor:
    """The tensor of a key that is copied, not merged."""
    if kp.action == "clip_ids":
        return torch.arange(kp.shape[-1], dtype=kp.out_dtype).reshape(kp.shape)
    return tensors[{"keep_a": "a", "copy_b": "b", "vae": "v"}[kp.action]]


def _deliver(sink, kp, result, target=None) -> None:
    """Hand `result` to the sink, cast into its target when it offers one."""
    if target is None:
        target = sink.target(kp)
    if target is not None:
        if result is not target:
            target.copy_(result)
        result = target
    elif result.dtype != kp.out_dtype:
        result = result.to(kp.out_dtype)
    sink.put(kp, result)


def _produce(plan, kp, tensors, sink, scratch, ctx, device, report, derived=None) -> None:
    _count(kp, report)
    target = sink.target(kp)
    if kp.action != "merge":
        result = _plain(kp, tensors)
    elif plan.method.multi is not None:
        result = merge_multi(plan, kp, tensors, target, device, derived, _check_finite)
    elif plan.method.elementwise and not kp.channels and not kp.adjust and tensors["a"].dim() > 0:
        if target is None:
            target = torch.empty(kp.shape, dtype=kp.out_dtype)
        ctx.key, ctx.stats = kp.key, None
        _merge_elementwise(plan, kp, tensors, target, scratch, ctx)
        result = target
    else:
        result = _merge_whole(plan, kp, tensors, device)
    _deliver(sink, kp, result, target)


def merge_to_file(recipe, out_path, **kwargs) -> Report:
    """See `merger.filemerge.merge_to_file`."""
    from .filemerge import merge_to_file as _merge_to_file
    return _merge_to_file(recipe, out_path, **kwargs)
