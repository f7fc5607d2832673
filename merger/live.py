"""Merging into a loaded model in place, and putting its weights back bit-exactly.

The host gives a `LiveModel` (merger/live_module.py): a map checkpoint key → `Target`
(merger/live_targets.py: which live tensor(s) hold the key and how the file's tensor becomes
them) and a `writing()` context that every write runs in (the WebUI's LoRA state reset, the grad
mode its tensors need). Writes are `copy_` into the live tensors, on their device and in their
dtype: no second model exists at any time.

Before the first write to a key its original value is secured: the A tensor read for merging,
converted the way the WebUI's loader converts it (the target's own conversion, a plain cast, or
through fp16), is compared bitwise with the live tensor(s); if equal the file is the backup,
otherwise CPU copies of just those tensors are kept (foreign VAE, …)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import AlloyError
from .live_module import LiveModel, ModuleLive, as_live, reset_lora_state  # noqa: F401  (re-exported)
from .live_targets import (Target, bitwise_equal, checkpoint_name, convert, direct, keep,  # noqa: F401
                           matching_via, owner_map, put_back, reproducing_conversion, write)

_FP16_CACHE_ATTR = {"weight": "fp16_weight", "bias": "fp16_bias"}


@dataclass
class Original:
    """How to put one key back: from model A's file (through `via`, None = a plain cast) or from
    `kept` (CPU copies, one per live tensor of the target)."""

    via: torch.dtype | None = None
    kept: tuple | None = None
    fp16_cache: tuple | None = None   # (module, attr, old value) of A1111's fp8 `fp16_weight` cache


@dataclass
class LiveState:
    """Modified keys of the loaded model since it was loaded (empty = pristine)."""

    base_path: str
    originals: dict[str, Original] = field(default_factory=dict)
    signatures: dict[str, object] = field(default_factory=dict)
    recipe: object | None = None
    identity: str | None = None
    plan: object | None = None
    fids: dict = field(default_factory=dict)   # slot → cache.FileId of the sources merged
    groups: object | None = None               # merger.livegroups.LiveGroups of the last merge

    @property
    def dirty(self) -> bool:
        return bool(self.originals)


def _fp16_cache(t: Target):
    """(module, cache attribute) of A1111's fp8 `fp16_weight`/`fp16_bias` copy of a one-slot target."""
    if len(t.slots) != 1:
        return None
    module, attr = t.slots[0]
    cache_attr = _FP16_CACHE_ATTR.get(attr)
    return (module, cache_attr) if cache_attr and getattr(module, cache_attr, None) is not None else None


def _capture(state: LiveState, key: str, t: Target, source_a) -> None:
    """Secure the original of `key` before its first write (see module docstring)."""
    if key in state.originals:
        return
    a = source_a.read(key) if source_a is not None and key in source_a else None
    ok, via = matching_via(t, a)
    cache = _fp16_cache(t)
    fp16 = (cache[0], cache[1], getattr(*cache)) if cache else None
    state.originals[key] = Original(via, None if ok else keep(t), fp16)


def restore(live, state: LiveState, source_a, keys=None, targets=None) -> int:
    """Put `keys` (default: every modified key) back bit-exactly; returns how many.

    `live`: the LiveModel (or nn.Module); `targets` (its map, inside its writing() context)
    skips that work per call."""
    keys = list(state.originals) if keys is None else [k for k in keys if k in state.originals]
    if targets is None:
        live = as_live(live)
        with live.writing():
            return restore(live, state, source_a, keys, live.targets(keys))
    for key in keys:
        orig, t = state.originals[key], targets[key]
        if orig.kept is not None:
            put_back(t, orig.kept)
        else:
            write(t, source_a.read(key), orig.via)
        if orig.fp16_cache is not None:
            m, cattr, old = orig.fp16_cache
            setattr(m, cattr, old)
        del state.originals[key]
        state.signatures.pop(key, None)
    return len(keys)


class LiveSink:
    """Engine sink (begin/target/put/finish/abort) writing merged tensors into the live model.

    Runs inside the LiveModel's writing() context. `begin` checks every planned key against its
    target (shape, writable) before anything changes, then puts `back` (keys an earlier merge
    changed that now keep A) back. `target(kp)` returns the live tensor itself when the engine can
    compute straight into it, else a compute-precision buffer that `put` writes through the
    target's conversion. Keys without a target are counted in `missing` and skipped (the WebUIs
    load with strict=False too)."""

    def __init__(self, targets: dict[str, Target], state: LiveState, source_a, back=()):
        self.targets, self.state, self.source_a, self.back = targets, state, source_a, list(back)
        self.missing: list[str] = []
        self.written: list[str] = []
        self._buf = torch.empty(0, dtype=torch.uint8)
        self._dtype = torch.float32

    def begin(self, plan) -> None:
        self._dtype = getattr(plan, "compute_dtype", torch.float32)
        for kp in getattr(plan, "items", ()):
            t = self.targets.get(kp.key)
            if t is None:
                continue
            if kp.action != "keep_a" and t.refuse:
                raise AlloyError(t.refuse)
            shape = tuple(kp.shape or t.shape)
            if t.shape != shape:
                raise AlloyError(f"The loaded model's tensor {kp.key} has shape {t.shape}, "
                                 f"but the merge produces {shape}; load model A first.")
        restore(None, self.state, self.source_a, self.back, self.targets)

    def _scratch(self, shape) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= int(d)
        nbytes = n * self._dtype.itemsize
        if self._buf.numel() < nbytes:
            self._buf = torch.empty(nbytes, dtype=torch.uint8)
        return self._buf[:nbytes].view(self._dtype).reshape(shape)

    def target(self, kp) -> torch.Tensor | None:
        t = self.targets.get(kp.key)
        if t is None or getattr(kp, "action", "merge") == "keep_a":
            return None
        if any(live.device.type == "meta" for live in t.tensors()):
            return None
        _capture(self.state, kp.key, t, self.source_a)
        live = direct(t) if _fp16_cache(t) is None else None
        if live is not None:
            return live
        if not all(live.is_floating_point() for live in t.tensors()):
            return None
        return self._scratch(t.shape)

    def put(self, kp, tensor: torch.Tensor) -> None:
        key = kp.key
        t = self.targets.get(key)
        if t is None:
            self.missing.append(key)
            return
        if getattr(kp, "action", "merge") == "keep_a":
            if key in self.state.originals:
                restore(None, self.state, self.source_a, [key], self.targets)
            return
        if any(live.device.type == "meta" for live in t.tensors()):
            raise AlloyError(f"The loaded model's tensor {key} is not in memory (meta device); "
                             "reload the checkpoint and try again.")
        _capture(self.state, key, t, self.source_a)
        write(t, tensor, t.via)
        cache = _fp16_cache(t)
        if cache is not None:
            setattr(cache[0], cache[1], tensor.detach().to("cpu", torch.float16, copy=True))
        self.written.append(key)

    def finish(self, report=None) -> None:
        pass

    def abort(self) -> None:
        pass
