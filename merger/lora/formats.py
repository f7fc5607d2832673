"""LoRA files: read a kohya / LyCORIS file into typed modules, with clear errors for bad files.

A module is every tensor sharing the key prefix before the first "." (kohya naming, e.g.
`lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight`). Kinds:

* ``lora``  – `lora_down.weight` (r×in[×k×k]), `lora_up.weight` (out×r[×1×1]), optional
  `lora_mid.weight` (LoCon CP core) and `alpha`; PEFT `lora_A`/`lora_B` are renamed to down/up.
* ``loha``  – `hada_w1_a/b`, `hada_w2_a/b`, optional `hada_t1/t2`, `alpha` (LyCORIS LoHa).
* ``lokr``  – `lokr_w1` or `lokr_w1_a/b`, `lokr_w2` or `lokr_w2_a/b`, optional `lokr_t2`, `alpha`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from merger.errors import AlloyError

LORA_PARTS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight")
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
SCALAR_PARTS = ("alpha",)
PEFT_RENAMES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# kohya's svd_merge_lora / merge_lora store `torch.tensor(rank)`: int64 alphas (0-d or one element)
ALPHA_DTYPES = FLOAT_DTYPES + (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@dataclass
class LoraModule:
    """One LoRA module: `name` is its kohya name, `weights` maps part name -> tensor."""

    name: str
    kind: str                                  # "lora" | "loha" | "lokr"
    weights: dict[str, torch.Tensor]
    alpha: float | None = None

    @property
    def rank(self) -> int | None:
        """Rank as the WebUI computes it: lora_down rows; LoHa w1_b rows; LoKr w1_b/w2_b rows."""
        w = self.weights
        for part in ("lora_down.weight", "hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
            if part in w:
                return int(w[part].shape[0])
        return None

    @property
    def scale(self) -> float:
        """alpha / rank (1.0 when either is unknown), exactly the WebUI's `calc_scale`."""
        r = self.rank
        return float(self.alpha) / r if (self.alpha is not None and r) else 1.0

    @property
    def is_conv(self) -> bool:
        return any(t.dim() == 4 for t in self.weights.values())

    @property
    def kernel(self) -> tuple[int, int] | None:
        """Spatial kernel of the delta for LoRA/LoCon modules (None for linear)."""
        d = self.weights.get("lora_mid.weight", self.weights.get("lora_down.weight"))
        if d is None or d.dim() != 4:
            return None
        return (int(d.shape[2]), int(d.shape[3]))


@dataclass
class LoraFile:
    path: str
    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32

    @property
    def kinds(self) -> set[str]:
        return {m.kind for m in self.modules.values()}


def split_key(key: str) -> tuple[str, str]:
    """'module.part.sub' -> ('module', 'part.sub'); PEFT lora_A/lora_B become lora_down/lora_up."""
    if "." not in key:
        return key, ""
    name, part = key.split(".", 1)
    return name, PEFT_RENAMES.get(part, part)


def module_kind(name: str, parts: set[str], where: str) -> str:
    """The module's kind from the set of its part names; AlloyError when incomplete/unknown."""
    if "dora_scale" in parts:
        raise AlloyError(f"{where}: module {name!r} is a DoRA module, which is not supported")
    if parts & set(LORA_PARTS):
        if not {"lora_down.weight", "lora_up.weight"} <= parts:
            raise AlloyError(f"{where}: module {name!r} has only one of lora_down/lora_up")
        kind = "lora"
        known = set(LORA_PARTS)
    elif parts & set(LOHA_PARTS):
        if not {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= parts:
            raise AlloyError(f"{where}: LoHa module {name!r} lacks one of hada_w1_a/b, hada_w2_a/b")
        kind = "loha"
        known = set(LOHA_PARTS)
    elif parts & set(LOKR_PARTS):
        has1 = "lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= parts
        has2 = "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= parts
        if not (has1 and has2):
            raise AlloyError(f"{where}: LoKr module {name!r} lacks its w1 or w2 factors")
        kind = "lokr"
        known = set(LOKR_PARTS)
    else:
        raise AlloyError(
            f"{where}: module {name!r} has parts {sorted(parts)} of an unsupported type "
            "(supported: LoRA/LoCon, LoHa, LoKr)"
        )
    extra = parts - known - set(SCALAR_PARTS)
    if extra:
        raise AlloyError(f"{where}: module {name!r} has unexpected parts {sorted(extra)}")
    return kind


def check_lora_shapes(m: LoraModule, where: str) -> None:
    """down is r×in[×k×k], up is out×r[×1×1]: the inner ranks must agree."""
    if m.kind != "lora":
        return
    down, up = m.weights["lora_down.weight"], m.weights["lora_up.weight"]
    if down.dim() not in (2, 4) or up.dim() not in (2, 4):
        raise AlloyError(f"{where}: module {m.name!r} has lora_down/lora_up of unusable dimensions")
    inner = m.weights["lora_mid.weight"].shape[0] if "lora_mid.weight" in m.weights else down.shape[0]
    if up.shape[1] != inner:
        raise AlloyError(
            f"{where}: module {m.name!r} has lora_up rank {up.shape[1]} but lora_down rank {down.shape[0]}"
        )


def build_modules(tensors: dict[str, torch.Tensor], where: str) -> dict[str, LoraModule]:
    """Group raw tensors into validated LoraModules (see module docstring for the parts)."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, part = split_key(key)
        if not part:
            raise AlloyError(f"{where}: tensor {key!r} is not a LoRA weight (no module.part name)")
        if t.dtype not in (ALPHA_DTYPES if part == "alpha" else FLOAT_DTYPES):
            raise AlloyError(f"{where}: tensor {key!r} has non-float dtype {t.dtype}")
        grouped.setdefault(name, {})[part] = t
    if not grouped:
        raise AlloyError(f"{where} contains no tensors")
    modules = {}
    for name, parts in grouped.items():
        kind = module_kind(name, set(parts), where)
        alpha = parts.pop("alpha", None)
        if alpha is not None and alpha.numel() != 1:
            raise AlloyError(f"{where}: module {name!r} has a non-scalar alpha")
        m = LoraModule(name, kind, parts, None if alpha is None else float(alpha.reshape(()).item()))
        check_lora_shapes(m, where)
        modules[name] = m
    return modules


def load_lora(path: str, label: str = "LoRA") -> LoraFile:
    """Read a LoRA file (.safetensors, or .pt/.ckpt through the safe loader) into a LoraFile."""
    from merger.io import open_source

    path = os.fspath(path)
    where = f"{label} ({path})"
    src = open_source(path, label)
    try:
        tensors = {k: src.read(k) for k in src.keys()}
        metadata = dict(getattr(src, "metadata", {}) or {})
    finally:
        src.close()
    modules = build_modules(tensors, where)
    dtypes = [t.dtype for m in modules.values() for t in m.weights.values()]  # factors only (no alphas)
    dtype = max(set(dtypes), key=dtypes.count) if dtypes else torch.float32
    return LoraFile(path, modules, metadata, dtype)
