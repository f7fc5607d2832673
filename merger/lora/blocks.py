"""LoRA block weights (the LoRA Block Weight extension's formats) and `FILE:RATIO[:BLOCKS]` specs.

Block lists by length (value i applies to block ids[i]; blocks a short list does not name get 1,
as in the LoRA Block Weight extension, so LoCon layers outside them keep full strength):
* SD1/SD2: 17 = BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03…OUT11; 26 = every block.
* SDXL: 12 = BASE, IN04, IN05, IN07, IN08, M00, OUT00…OUT05; 20 = every block; 26 → 20.
* Flux: 61 = every block.
A module's block is the block of the checkpoint key it targets (`merger.arch`: BASE = text encoders).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from merger.errors import AlloyError

LBW17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00") + tuple(f"OUT{i:02d}" for i in range(3, 12))
LBW12_SDXL = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00") + tuple(f"OUT{i:02d}" for i in range(6))
BUILTIN_PRESETS = {     # LoRA Block Weight extension defaults, 17 values each
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}
_NUM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA input: file, strength and optional block list text (preset name or values)."""

    path: str
    ratio: float = 1.0
    blocks: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "ratio": self.ratio, "blocks": self.blocks}


def parse_presets(text: str | None) -> dict[str, str]:
    """Preset text (lines `NAME:v1,v2,…`, as lbwpresets.txt) merged over the built-ins."""
    presets = dict(BUILTIN_PRESETS)
    for line in (text or "").splitlines():
        if ":" in line:
            name, values = line.split(":", 1)
            if name.strip():
                presets[name.strip()] = values.strip()
    return presets


def is_number(s: str) -> bool:
    return bool(_NUM.match(s.strip()))


def parse_spec(text: str) -> LoraSpec:
    """`FILE[:RATIO[:BLOCKS]]` -> LoraSpec, read from the right so Windows drive letters
    (`C:\\x.safetensors:-1.5:OUTALL`) and negative ratios work. BLOCKS is a preset name or a
    comma list."""
    text = text.strip()
    parts = text.split(":")
    if len(parts) >= 3 and is_number(parts[-2]) and not is_number(parts[-1]) or (
            len(parts) >= 3 and is_number(parts[-2]) and "," in parts[-1]):
        path, ratio, blocks = ":".join(parts[:-2]), parts[-2], parts[-1].strip()
    elif len(parts) >= 2 and is_number(parts[-1]):
        path, ratio, blocks = ":".join(parts[:-1]), parts[-1], None
    else:
        path, ratio, blocks = text, "1", None
    if not path:
        raise AlloyError(f"LoRA spec {text!r} has no file name (use FILE:RATIO[:BLOCKS])")
    return LoraSpec(path, float(ratio), blocks or None)


def block_values(blocks: str | None, block_ids: tuple[str, ...], arch: str,
                 presets: dict[str, str] | None = None) -> dict[str, float] | None:
    """Block list text -> {block id: weight}, None when `blocks` is empty (all 1)."""
    if blocks is None or not str(blocks).strip():
        return None
    presets = presets if presets is not None else BUILTIN_PRESETS
    text = str(blocks).strip()
    if text in presets:
        text = presets[text]
    elif not is_number(text.split(",")[0]):
        raise AlloyError(f"unknown block-weight preset {text!r} (known: {', '.join(sorted(presets))})")
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AlloyError(f"block weights {blocks!r} must be numbers separated by commas") from None
    names = layout_for(len(values), block_ids, arch)
    if names is None:
        raise AlloyError(f"{len(values)} block weights do not fit {arch} "
                         f"(use {allowed_lengths(block_ids, arch)} values)")
    out = {b: 1.0 for b in block_ids}
    out.update(zip(names, values))
    return out


def layout_for(n: int, block_ids: tuple[str, ...], arch: str) -> tuple[str, ...] | None:
    """The block ids a list of n values names, for this architecture (None = not allowed)."""
    if n == len(block_ids):
        return tuple(block_ids)
    if arch in ("sd1", "sd2") and n == 17:
        return LBW17
    if arch == "sdxl" and n == 12:
        return LBW12_SDXL
    if arch == "sdxl" and n == 26:     # SD layout: BASE, IN00…IN08, M00, OUT00…OUT08 are kept
        names = ("BASE",) + tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(12))
        return tuple(b if b in block_ids else f"_unused{i}" for i, b in enumerate(names))
    return None


def allowed_lengths(block_ids: tuple[str, ...], arch: str) -> str:
    extra = {"sd1": [17], "sd2": [17], "sdxl": [12, 26]}.get(arch, [])
    return " or ".join(str(n) for n in sorted(set(extra + [len(block_ids)])))
