"""Grouped live re-merges: after a first live merge, a change of the ratios (α, β, block lists)
costs a few operations per group of keys instead of the per-key machinery.

After a live merge (merger/session.py) the keys it computed are kept grouped on the LiveState
(`LiveGroups`) when their work is plain elementwise arithmetic into one live tensor each: merge
action, an elementwise method (not multi-model, not per-key except `self`), no channel slice or
Adjust, a direct target (merger/live_targets.direct: one slot, no transpose or rounding step, not
A1111's fp8 `fp16_weight` cache). A group holds the keys of one ratio class (block, elemental
rule, `self`'s excluded keys) and one output precision; keys are split in two kinds:

  * small keys (≤ `SMALL` elements): their inputs packed once into flat compute-dtype buffers; a
    re-merge runs the method's own kernel once over the packed buffers, checks the result with one
    aminmax (merger.kernels.FiniteCheck, deferred on a GPU: one host transfer per merge) and copies
    it into the live tensors with one `torch._foreach_copy_`;
  * big keys: read from the source cache at every re-merge (no second copy of the sources is
    held) and computed straight into the live tensor through `merger.kernels.merge_span`, the
    executor's own chunked kernel.

Either way each value goes through the same kernel in the same compute dtype and is rounded once
to the live tensor's dtype, so results equal the per-key path bit for bit. When the group is built
the largest magnitude of each input is taken (the packed buffers, and each big key's tensors the
cache holds; one transfer from the device): a re-merge whose method bounds its result
(`Method.bound`) within the output dtype from those skips the result's NaN/overflow check (a
pass over the output); any other result is checked as before. A group is recomputed
only when its ratios changed (the per-key path's signature rule). Keys not eligible go through the
per-key path (`rest`) in the same merge. Groups are dropped when anything else of the recipe, a
source file or the live tensors changed; the next merge then takes the per-key path and regroups."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .errors import Interrupted, TensorValueError
from .kernels import FiniteCheck, Scratch, _limit, merge_span
from .live import LiveState, _fp16_cache
from .live_targets import direct
from .methods import KeyContext
from .methods.scale import is_scaled, scale_self
from .plan import Plan, inputs_text
from .precision import full_float32

SMALL = 1 << 16          # keys up to this many elements are packed
CPU_CHUNK = 1 << 18      # big keys on the CPU: pieces whose buffers stay in the L2 cache
GPU_CHUNK = 1 << 24      # on a GPU: a whole key per piece (SDXL's largest: 14.7 Mi elements), so a re-merge
                         # launches a few kernels per key, not per MiB (three float32 buffers, 64 MiB each)
RATIO_FIELDS = ("alpha", "beta", "alpha_blocks", "beta_blocks", "dice", "hashes")
SLACK = 1 + 2 ** -16     # a bound's margin for the kernel's rounding (a few float32 operations, 2**-24 each)


def template(recipe) -> object:
    """The recipe with its ratio fields blanked: equal templates ⇒ groups can be reused."""
    return recipe.replace(alpha=0.0, beta=0.0, alpha_blocks=None, beta_blocks=None, dice=None, hashes={})


@dataclass
class Group:
    """Keys of one ratio class, one output dtype and one live dtype/device."""

    rep: str                         # a key of the group (asks the resolver for its ratios)
    block: str
    out_dtype: torch.dtype
    ratios: tuple | None = None      # (α, β) now in the live tensors
    keys: list = field(default_factory=list)        # small keys, in plan order
    slots: list = field(default_factory=list)       # `_slot` of each small key
    starts: list = field(default_factory=list)
    packed: dict = field(default_factory=dict)      # source slot → flat compute-dtype tensor
    out: torch.Tensor | None = None
    views: list = field(default_factory=list)       # views of `out` shaped like each small key
    big: list = field(default_factory=list)         # (key, `_slot`) of big keys
    mags: dict | None = None                        # source slot → max |x| of its packed buffer
    big_mags: list = field(default_factory=list)    # per big key: slot → max |x|, or None (not known)


@dataclass
class LiveGroups:
    """The grouped keys of the live merge whose recipe template is `template`."""

    template: object
    fids: dict
    plan: Plan                        # the plan of the merge the groups were built from
    groups: list
    rest: list                        # KeyPlans of merged keys on the per-key path
    grouped: set
    ptrs: list = field(default_factory=list)        # data_ptr of every grouped live tensor
    device: torch.device = torch.device("cpu")

    def slots(self):
        for g in self.groups:
            yield from g.slots
            yield from (s for _, s in g.big)

    def current_ptrs(self) -> list | None:
        try:
            return [_live(s).data_ptr() for s in self.slots()]
        except (AttributeError, KeyError):
            return None


def _slot(t) -> tuple:
    """(table, attr) of a one-slot target: the module's own parameter or buffer dict when the
    tensor is one (a dict lookup at each use instead of nn.Module.__getattr__), else (module, attr)."""
    m, a = t.slots[0]
    for table in (getattr(m, "_parameters", None), getattr(m, "_buffers", None)):
        if isinstance(table, dict) and table.get(a) is not None:
            return table, a
    return m, a


def _live(slot) -> torch.Tensor:
    """The live tensor of a `_slot` now."""
    obj, a = slot
    return obj[a] if isinstance(obj, dict) else getattr(obj, a)


def eligible(plan: Plan, kp, t) -> bool:
    """True when key plan `kp` into target `t` may be grouped (see module docstring)."""
    m = plan.method
    if kp.action != "merge" or m.multi is not None or not m.elementwise or kp.channels or kp.adjust:
        return False
    if m.uses_key and m.fn is not scale_self:
        return False
    if t is None or _fp16_cache(t) is not None or not kp.shape or math.prod(kp.shape) == 0:
        return False
    live = direct(t)
    return live is not None and live.is_floating_point() and tuple(live.shape) == tuple(kp.shape)


def _ratio_class(plan: Plan, resolver, kp) -> tuple:
    rule = resolver.elemental.rule_for(kp.key, kp.block) if resolver.elemental else None
    scaled = is_scaled(kp.key) if plan.method.uses_key else None
    return (kp.block, id(rule) if rule is not None else None, scaled, kp.out_dtype)


def build(plan: Plan, sources: dict, targets: dict, state: LiveState, resolver, device) -> LiveGroups | None:
    """Group the merged keys of `plan` (just written into the live model by the per-key path). The
    small keys' inputs are read from `sources` (the cache, or the file when the cache did not keep
    them) into the packed buffers."""
    device = torch.device(device)
    compute = plan.compute_dtype
    by_class: dict = {}
    rest, grouped = [], set()
    for kp in plan.items:
        if kp.action != "merge":
            continue
        t = targets.get(kp.key)
        if t is None:
            continue
        if not eligible(plan, kp, t) or state.signatures.get(kp.key) is None:
            rest.append(kp)
            continue
        cls = _ratio_class(plan, resolver, kp)
        g = by_class.get(cls)
        if g is None:
            g = by_class[cls] = Group(kp.key, kp.block, kp.out_dtype, (kp.alpha, kp.beta))
        if (kp.alpha, kp.beta) != g.ratios:          # the resolver disagrees with the plan: do not group
            rest.append(kp)
            continue
        grouped.add(kp.key)
        if math.prod(kp.shape) <= SMALL:
            g.keys.append(kp.key)
            g.slots.append(_slot(t))
        else:
            g.big.append((kp.key, _slot(t)))
    extremes = _Extremes()
    for g in by_class.values():
        g.big_mags = [_cached_extremes(extremes, sources, plan.slots, key) for key, _ in g.big]
        if not g.keys:
            continue
        n = 0
        for key in g.keys:
            g.starts.append(n)
            n += math.prod(plan[key].shape)
        for slot in plan.slots:
            buf = torch.empty(n, dtype=compute, device=device)
            views = [buf[s:s + math.prod(plan[k].shape)].view(plan[k].shape) for k, s in zip(g.keys, g.starts)]
            torch._foreach_copy_(views, [sources[slot].read(k) for k in g.keys])
            g.packed[slot] = buf
        g.mags = {slot: extremes.add(g.packed[slot]) for slot in plan.slots}
        g.out = torch.empty(n, dtype=compute, device=device)
        g.views = [g.out[s:s + math.prod(plan[k].shape)].view(plan[k].shape) for k, s in zip(g.keys, g.starts)]
    mag = extremes.values()
    for g in by_class.values():
        g.mags = None if g.mags is None else {s: mag[h] for s, h in g.mags.items()}
        g.big_mags = [None if m is None else {s: mag[h] for s, h in m.items()} for m in g.big_mags]
    lg = LiveGroups(None, {}, plan, [g for g in by_class.values() if g.keys or g.big], rest, grouped, device=device)
    ptrs = lg.current_ptrs()
    if ptrs is None:
        return None
    lg.ptrs = ptrs
    return lg


class _Extremes:
    """Largest magnitudes of many tensors, moved to the host in one transfer per device."""

    def __init__(self):
        self.parts: dict = {}

    def add(self, t: torch.Tensor) -> tuple:
        """A handle for max |t| (inf when t holds NaN or inf)."""
        part = self.parts.setdefault(t.device, [])
        part.append(torch.stack(torch.aminmax(t)).double())
        return t.device, len(part) - 1

    def values(self) -> dict:
        out = {}
        for dev, part in self.parts.items():
            for i, (lo, hi) in enumerate(torch.stack(part).tolist()):
                out[dev, i] = max(-lo, hi) if math.isfinite(lo) and math.isfinite(hi) else math.inf
        return out


def _cached_extremes(extremes: _Extremes, sources: dict, slots, key: str) -> dict | None:
    """Handles for max |x| of `key` in every source, when the cache holds them all (else None:
    nothing is read for this)."""
    held = [sources[s].cached(key) for s in slots]
    if any(t is None for t in held):
        return None
    return {s: extremes.add(t) for s, t in zip(slots, held)}


def proved(method, alpha: float, beta: float, gamma: float, mags: dict | None, out_dtype, compute) -> bool:
    """True when `method`'s bound, from the inputs' magnitudes `mags`, shows every result value
    finite and within both the compute and the output dtype (its check can be skipped)."""
    if method.bound is None or mags is None or not all(math.isfinite(m) for m in mags.values()):
        return False
    bound = method.bound(alpha, beta, gamma, mags)
    return math.isfinite(bound) and bound * SLACK <= min(_limit(out_dtype), torch.finfo(compute).max)


def usable(lg: LiveGroups | None, recipe, fids: dict) -> bool:
    """The groups fit this merge: same template and files, and the live tensors did not move."""
    return (lg is not None and lg.fids == fids and lg.template == template(recipe)
            and lg.current_ptrs() == lg.ptrs)


def release(state: LiveState) -> None:
    """Forget the groups, writing each grouped key's signature (what the per-key path compares)."""
    lg = getattr(state, "groups", None)
    if lg is None:
        return
    state.groups = None
    for g in lg.groups:
        if g.ratios is None:
            continue
        for key in [*g.keys, *(k for k, _ in g.big)]:
            if key in state.originals:
                kp = replace(lg.plan[key], alpha=g.ratios[0], beta=g.ratios[1])
                state.signatures[key] = lg.plan.signature(key, kp)


def ratios(lg: LiveGroups, resolver) -> list:
    """The new (α, β) of every group, validated by the method as build_plan does (the recipe's own
    α, β first)."""
    out = [resolver.ratios(g.rep, g.block) for g in lg.groups]
    method = lg.plan.method
    gamma = lg.plan.recipe.gamma
    method.validate(resolver.recipe.alpha, resolver.recipe.beta, gamma)
    for r in dict.fromkeys(r for r in out if r is not None):
        method.validate(r[0], r[1], gamma)
    return out


def rest_plan(lg: LiveGroups, recipe, resolver) -> Plan:
    """The per-key path's plan for the keys that are not grouped, with this merge's ratios."""
    items = []
    for kp in lg.rest:
        r = resolver.ratios(kp.key, kp.block)
        items.append(replace(kp, alpha=r[0], beta=r[1]) if r is not None else replace(kp, action="keep_a"))
    p = lg.plan
    return Plan(recipe, p.arch, p.method, items, p.compute_dtype, adjust=p.adjust, vae={}, notes=[], slots=p.slots)


@full_float32()
def apply(lg: LiveGroups, new: list, sources: dict, *, progress=None, should_stop=None) -> tuple[int, int]:
    """Recompute every group whose ratios changed into the live tensors; returns (keys merged, source
    tensors taken from memory: the packed ones).
    Runs inside the live model's writing() context. Raises TensorValueError (naming the key and the
    inputs) or Interrupted; the caller then restores the original model."""
    plan, method, gamma = lg.plan, lg.plan.method, lg.plan.recipe.gamma
    check = FiniteCheck(defer=lg.device.type != "cpu")
    scratch = Scratch(plan.compute_dtype, lg.device, CPU_CHUNK if lg.device.type == "cpu" else GPU_CHUNK)
    chunk = scratch.n
    ctx = KeyContext(key="")
    todo = [(g, r) for g, r in zip(lg.groups, new) if r is not None and r != g.ratios]
    total, done = sum(len(g.keys) + len(g.big) for g, _ in todo), 0
    try:
        for g, (alpha, beta) in todo:
            g.ratios = None                     # unknown until this group is written completely
            if g.keys:
                ctx.key, ctx.out = g.rep, g.out
                p = g.packed
                res = method.fn(p["a"], p.get("b"), p.get("c"), alpha=alpha, beta=beta, gamma=gamma, ctx=ctx)
                if not proved(method, alpha, beta, gamma, g.mags, g.out_dtype, plan.compute_dtype):
                    check.add(g.keys, g.starts, res, g.out_dtype)
                if res.data_ptr() != g.out.data_ptr():
                    g.out.copy_(res)
                torch._foreach_copy_([_live(s) for s in g.slots], g.views)
            for (key, slot), mags in zip(g.big, g.big_mags):
                live = _live(slot)
                t = {s: sources[s].read(key).reshape(-1) for s in plan.slots}
                ctx.key, ctx.stats = key, None
                safe = proved(method, alpha, beta, gamma, mags, g.out_dtype, plan.compute_dtype)
                merge_span(method, t, live.view(-1), alpha=alpha, beta=beta, gamma=gamma, ctx=ctx, scratch=scratch,
                           check=None if safe else check, keys=[key], starts=[0], out_dtype=g.out_dtype, chunk=chunk)
            g.ratios = (alpha, beta)
            done += len(g.keys) + len(g.big)
            if progress is not None:
                progress(done, total, g.rep)
            if should_stop is not None and should_stop():
                raise Interrupted("The merge was stopped; nothing was changed.")
        check.flush()
    except TensorValueError as e:
        raise e.with_inputs(inputs_text(sources)) from None
    return done, sum(len(g.keys) for g, _ in todo) * len(plan.slots)
