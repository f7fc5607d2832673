"""Shared pieces of the LoRA operations: result record, device choice, input loading, block weights."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from merger.errors import AlloyError
from merger.lora.blocks import LoraSpec, block_values
from merger.lora.formats import LoraFile, load_lora
from merger.lora.keymap import checkpoint_target, lora_arch


@dataclass
class LoraResult:
    """What an operation did: output path, per-module ranks and relative errors, messages."""

    op: str
    path: str | None = None
    arch: str | None = None
    modules: int = 0
    ranks: dict[str, int] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)       # relative Frobenius error
    overall_error: float | None = None
    unmatched: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def message(self) -> str:
        err = "" if self.overall_error is None else f", relative error {self.overall_error:.3g}"
        un = f", {len(self.unmatched)} unmatched modules" if self.unmatched else ""
        return f"{self.op}: {self.modules} modules → {self.path}{err}{un} ({self.seconds:.1f} s)"

    def to_dict(self) -> dict:
        return {"op": self.op, "path": self.path, "arch": self.arch, "modules": self.modules,
                "ranks": self.ranks, "errors": self.errors, "overall_error": self.overall_error,
                "unmatched": self.unmatched, "messages": self.messages, "seconds": self.seconds,
                "message": self.message()}


def overall(norm2: list[float], err2: list[float]) -> float | None:
    """√(Σ‖ΔW − ΔW'‖² / Σ‖ΔW‖²) over modules."""
    tot = sum(norm2)
    return math.sqrt(sum(err2) / tot) if tot > 0 else (0.0 if norm2 else None)


def pick_device(device: str | None) -> torch.device:
    """'auto' → CUDA when available, else CPU; AlloyError for an unavailable device."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise AlloyError(f"device {device!r} was requested but CUDA is not available")
    return torch.device(device)


def load_specs(specs: list[LoraSpec]) -> list[LoraFile]:
    if not specs:
        raise AlloyError("no LoRA given")
    return [load_lora(s.path, f"LoRA {i + 1}") for i, s in enumerate(specs)]


def common_arch(files: list[LoraFile]) -> str | None:
    """The one architecture all LoRAs share (AlloyError naming two files that differ)."""
    archs = []
    for f in files:
        shapes = {n: tuple(m.weights["lora_down.weight"].shape) for n, m in f.modules.items()
                  if "lora_down.weight" in m.weights}
        archs.append(lora_arch(f.modules, f.metadata, shapes))
    known = [(f, a) for f, a in zip(files, archs) if a is not None]
    for f, a in known[1:]:
        if a != known[0][1]:
            raise AlloyError(f"{known[0][0].path} is a {known[0][1]} LoRA but {f.path} is a {a} LoRA")
    return known[0][1] if known else None


def block_weight_fn(spec: LoraSpec, arch: str | None, presets: dict | None, messages: list[str]):
    """name -> block weight for `spec` (1 everywhere without a block list)."""
    if not spec.blocks:
        return lambda name: 1.0
    if arch is None:
        raise AlloyError(f"cannot apply block weights to {spec.path}: its architecture is unknown")
    from merger.arch import get_arch

    a = get_arch(arch)
    values = block_values(spec.blocks, a.block_ids, arch, presets)

    def weight(name: str) -> float:
        t = checkpoint_target(name, arch)
        block = a.block_of(t.key) if t is not None else None
        if block is None:
            messages.append(f"{spec.path}: module {name} has no block; weight 1 used")
            return 1.0
        return values.get(block, 1.0)
    return weight
