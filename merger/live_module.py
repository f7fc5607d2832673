"""A loaded `torch.nn.Module` as a live model: AUTOMATIC1111's WebUI (its model is one module tree
named like the checkpoint), the standalone tests and benchmarks.

Checkpoint key `k` is the parameter or buffer of the same dotted name once the `wrapped` segments
of the WebUI's text-encoder hijack are dropped (live_targets.owner_map). fp8 weights are reached
through fp16, as the WebUI loads them (load into the half model, then cast).

The WebUI's built-in Lora extension keeps per-module backups (`network_weights_backup`,
`network_bias_backup`) of the weights it patches; `reset_lora_state` makes it forget them so the
next LoRA application backs up the merged weights instead of the pre-merge ones."""
from __future__ import annotations

import contextlib

import torch

from .live_targets import Target, owner_map

_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


class LiveModel:
    """What the live machinery needs from a loaded model (see merger/live.py)."""

    def targets(self, keys) -> dict[str, Target]:
        """checkpoint key → Target for those of `keys` that have a live tensor."""
        raise NotImplementedError

    def writing(self):
        """Context around every write: the WebUI's LoRA state reset first, the grad mode its
        tensors need (no_grad; Forge: inference_mode)."""
        return torch.no_grad()


class ModuleLive(LiveModel):
    def __init__(self, model: torch.nn.Module):
        self.model = model

    def targets(self, keys=None) -> dict[str, Target]:
        out = {}
        for key, (module, attr) in owner_map(self.model).items():
            t = getattr(module, attr)
            out[key] = Target(((module, attr),), via=torch.float16 if t.dtype in _FP8 else None)
        return out

    @contextlib.contextmanager
    def writing(self):
        with torch.no_grad():
            reset_lora_state(self.model)
            yield


def as_live(model) -> LiveModel | None:
    """A host's live_model() as a LiveModel (a plain nn.Module is wrapped)."""
    if model is None or isinstance(model, LiveModel):
        return model
    return ModuleLive(model)


# ---- built-in Lora extension (A1111) -----------------------------------------------------------
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
    for module in _modules(model):
        d = module.__dict__             # where the extension's plain attributes live (a getattr of a
        current = d.get("network_current_names", ())   # missing one costs nn.Module.__getattr__'s raise)
        has_backup = d.get("network_weights_backup") is not None or d.get("network_bias_backup") is not None
        if not current and not has_backup:
            continue
        if current:
            _restore_from_lora_backup(module)
        module.network_current_names = ()
        module.network_weights_backup = None
        module.network_bias_backup = None
        n += 1
    return n


def _modules(model: torch.nn.Module) -> list:
    """Every module of the tree once (what model.modules() yields, in another order), without its
    nested generators: a walk over the `_modules` dicts costs a few ms for an SDXL-sized tree."""
    out, seen, stack = [], set(), [model]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append(m)
        stack.extend(c for c in m._modules.values() if c is not None)
    return out
