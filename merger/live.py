"""Merging into a loaded `torch.nn.Module` in place, and putting its weights back bit-exactly.

Checkpoint key `k` maps to the parameter or buffer of the same dotted name once the `wrapped`
segments of the WebUI's text-encoder hijack are dropped (see `checkpoint_name`). Writes are
`copy_` into that tensor, on its device and in its dtype: no second model exists at any time.
Before the first write to a key its original value is secured: the A tensor read for merging,
converted the way the WebUI converts it ("cast", or "via_fp16" for fp8 storage), is compared
bitwise with the live tensor; if equal the file is the backup, otherwise a CPU copy of just that
tensor is kept (foreign VAE, …).

The WebUI's built-in Lora extension keeps per-module backups (`network_weights_backup`,
`network_bias_backup`) of the weights it patches; `reset_lora_state` makes it forget them so the
next LoRA application backs up the merged weights instead of the pre-merge ones."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import AlloyError

CONVERSIONS = ("cast", "via_fp16")
_FP16_CACHE_ATTR = {"weight": "fp16_weight", "bias": "fp16_bias"}


# ---- the model's tensors ---------------------------------------------------------------------
def checkpoint_name(name: str) -> str:
    """The checkpoint key of module path `name`: the WebUI's hijack wraps the text encoder and its
    token embedding in modules that hold the original as `.wrapped`
    (`cond_stage_model.wrapped.transformer…token_embedding.wrapped.weight` is checkpoint key
    `cond_stage_model.transformer…token_embedding.weight`), so every `wrapped` segment is dropped."""
    return ".".join(part for part in name.split(".") if part != "wrapped")


def owner_map(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """checkpoint key → (module, attribute) for every parameter and buffer (tied ones under each name;
    names inside the WebUI's hijack wrappers under their checkpoint name too, see checkpoint_name).

    The tensor is looked up at write time (`getattr(module, attr)`), because --medvram/--lowvram
    hooks move modules between devices by swapping `.data`."""
    out, aliases = {}, {}
    for mname, module in model.named_modules(remove_duplicate=False):
        prefix = mname + "." if mname else ""
        for table in (module._parameters, module._buffers):
            for attr, t in table.items():
                if t is not None:
                    out[prefix + attr] = (module, attr)
                    aliases.setdefault(checkpoint_name(prefix + attr), (module, attr))
    for key, owner in aliases.items():
        out.setdefault(key, owner)
    return out


def bitwise_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaNs compare by bit pattern)."""
    if x.dtype != y.dtype or tuple(x.shape) != tuple(y.shape):
        return False
    if x.numel() == 0:
        return True
    y = y.to(x.device)
    return torch.equal(x.contiguous().reshape(-1).view(torch.uint8), y.contiguous().reshape(-1).view(torch.uint8))


def convert(a: torch.Tensor, conversion: str, dtype: torch.dtype, device) -> torch.Tensor:
    """File tensor → live representation: "cast" = a.to(dtype); "via_fp16" = a.to(fp16).to(dtype)
    (the WebUI's fp8 path: load into a half model, then cast to float8)."""
    if conversion == "via_fp16":
        a = a.to(device=device, dtype=torch.float16)
    return a.to(device=device, dtype=dtype)


def reproducing_conversion(a: torch.Tensor | None, live: torch.Tensor) -> str | None:
    """The conversion of file tensor `a` that equals `live` bitwise, or None."""
    if a is None or tuple(a.shape) != tuple(live.shape):
        return None
    for conv in CONVERSIONS:
        if conv == "via_fp16" and (live.dtype == torch.float16 or not a.is_floating_point()):
            continue
        try:
            if bitwise_equal(live, convert(a, conv, live.dtype, live.device)):
                return conv
        except (RuntimeError, TypeError):
            continue
    return None


# ---- built-in Lora extension ----------------------------------------------------------------
def _restore_from_lora_backup(module: torch.nn.Module) -> None:
    """What networks.network_restore_weights_from_backup does (v1.10.1), incl. MultiheadAttention."""
    wb = getattr(module, "network_weights_backup", None)
    bb = getattr(module, "network_bias_backup", None)
    if wb is None and bb is None:
        return
    is_mha = isinstance(module, torch.nn.MultiheadAttention)
    with torch.no_grad():
        if wb is not None:
            if is_mha:
                module.in_proj_weight.copy_(wb[0])
                module.out_proj.weight.copy_(wb[1])
            else:
                module.weight.copy_(wb)
        obj = module.out_proj if is_mha else module
        if bb is None:
            obj.bias = None
        else:
            obj.bias.copy_(bb)


def reset_lora_state(model: torch.nn.Module) -> int:
    """Return every module patched by a prompt LoRA to its un-patched weights and make the Lora
    extension forget its backups (they re-form from the current weights on the next generation).

    A module with `network_current_names != ()` holds backup + LoRA delta: restore the backup.
    One with `()` already holds its own weights (which may be merged): only drop the backups."""
    n = 0
    for module in model.modules():
        current = getattr(module, "network_current_names", ())
        has_backup = (getattr(module, "network_weights_backup", None) is not None
                      or getattr(module, "network_bias_backup", None) is not None)
        if not current and not has_backup:
            continue
        if current:
            _restore_from_lora_backup(module)
        module.network_current_names = ()
        module.network_weights_backup = None
        module.network_bias_backup = None
        n += 1
    return n


# ---- what the live model holds ------------------------------------------------------------------
@dataclass
class Original:
    """How to put one key back: from model A's file (`conversion`) or from `kept` (CPU copy)."""

    conversion: str | None = None
    kept: torch.Tensor | None = None
    fp16_cache: tuple | None = None   # (module, attr, old value) of the WebUI's fp8 `fp16_weight` cache


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

    @property
    def dirty(self) -> bool:
        return bool(self.originals)


def _capture(state: LiveState, key: str, module, attr: str, source_a) -> None:
    """Secure the original of `key` before its first write (see module docstring)."""
    if key in state.originals:
        return
    live = getattr(module, attr)
    a = source_a.read(key) if source_a is not None and key in source_a else None
    conv = reproducing_conversion(a, live)
    kept = None if conv else live.detach().to("cpu", copy=True)
    cache_attr = _FP16_CACHE_ATTR.get(attr)
    fp16 = None
    if cache_attr and getattr(module, cache_attr, None) is not None:
        fp16 = (module, cache_attr, getattr(module, cache_attr))
    state.originals[key] = Original(conv, kept, fp16)


def restore(model: torch.nn.Module, state: LiveState, source_a, keys=None, owners=None) -> int:
    """Put `keys` (default: every modified key) back bit-exactly; returns how many.

    `owners` (an `owner_map` whose Lora state was already reset) skips that work per call."""
    if owners is None:
        reset_lora_state(model)
        owners = owner_map(model)
    keys = list(state.originals) if keys is None else [k for k in keys if k in state.originals]
    with torch.no_grad():
        for key in keys:
            orig = state.originals[key]
            module, attr = owners[key]
            live = getattr(module, attr)
            if orig.kept is not None:
                live.data.copy_(orig.kept)
            else:
                live.data.copy_(convert(source_a.read(key), orig.conversion, live.dtype, live.device))
            if orig.fp16_cache is not None:
                m, cattr, old = orig.fp16_cache
                setattr(m, cattr, old)
            del state.originals[key]
            state.signatures.pop(key, None)
    return len(keys)


class LiveSink:
    """Engine sink (begin/target/put/finish/abort) writing merged tensors into `model` in place.

    `target(kp)` returns the live tensor itself (contiguous ones), so the engine can compute
    straight into it; `put` copies (with a cast) when it got a separate result. Keys the model
    lacks are counted in `missing` and skipped (the WebUI loads with strict=False too).
    A "keep_a" key that an earlier merge changed is put back from its original."""

    def __init__(self, model: torch.nn.Module, state: LiveState, source_a):
        self.model, self.state, self.source_a = model, state, source_a
        self.owners: dict = {}
        self.missing: list[str] = []
        self.written: list[str] = []

    def begin(self, plan) -> None:
        reset_lora_state(self.model)
        self.owners = owner_map(self.model)
        for kp in _plan_entries(plan):
            owner = self.owners.get(kp.key)
            if owner is None:
                continue
            live = getattr(*owner)
            shape = tuple(getattr(kp, "shape", live.shape) or live.shape)
            if tuple(live.shape) != shape:
                raise AlloyError(f"The loaded model's tensor {kp.key} has shape {tuple(live.shape)}, "
                                 f"but the merge produces {shape}; load model A first.")

    def target(self, kp) -> torch.Tensor | None:
        owner = self.owners.get(kp.key)
        if owner is None or getattr(kp, "action", "merge") == "keep_a":
            return None
        module, attr = owner
        live = getattr(module, attr)
        if not live.is_contiguous() or live.device.type == "meta":
            return None
        if getattr(module, _FP16_CACHE_ATTR.get(attr, "-"), None) is not None:
            return None        # want the compute-precision result to refresh the fp16 cache
        _capture(self.state, kp.key, module, attr, self.source_a)
        return live.data

    def put(self, kp, tensor: torch.Tensor) -> None:
        key = kp.key
        owner = self.owners.get(key)
        if owner is None:
            self.missing.append(key)
            return
        if getattr(kp, "action", "merge") == "keep_a":
            if key in self.state.originals:
                restore(self.model, self.state, self.source_a, [key], owners=self.owners)
            return
        module, attr = owner
        _capture(self.state, key, module, attr, self.source_a)
        live = getattr(module, attr)
        with torch.no_grad():
            if tensor is not live and tensor.data_ptr() != live.data_ptr():
                if live.device.type == "meta":
                    raise AlloyError(f"The loaded model's tensor {key} is not in memory (meta device); "
                                     "reload the checkpoint and try again.")
                live.data.copy_(tensor)
            cache_attr = _FP16_CACHE_ATTR.get(attr)
            if cache_attr and getattr(module, cache_attr, None) is not None:
                setattr(module, cache_attr, tensor.detach().to("cpu", torch.float16, copy=True))
        self.written.append(key)

    def finish(self, report=None) -> None:
        pass

    def abort(self) -> None:
        pass


def _plan_entries(plan):
    """KeyPlans of a plan (`plan.items`)."""
    return list(getattr(plan, "items", ()))
