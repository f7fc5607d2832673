"""Adjust (spec §8): detail/colour tuning of six UNet tensors after merging.

Values ``IN, OUT, OUT2, CONT, BRI, COL1, COL2, COL3`` (exactly 8 numbers; "" or all zero = off):
  input_blocks.0.0.weight × (1 − 0.01·IN)      input_blocks.0.0.bias × (1 + 0.02·IN)
  out.0.weight            × (1 − 0.01·OUT)     out.0.bias            × (1 + 0.02·OUT)
  out.2.weight            × (1 − 0.01·OUT2)    out.2.bias            + [0.02·CONT, c₁, c₂, c₃]
with (c₁, c₂, c₃) = 0.02 · (BRI·v_BRI + COL1·v_COL1 + COL2·v_COL2 + COL3·v_COL3), v from the family's
colour table below. Not available for Flux.
"""
from __future__ import annotations

from types import MappingProxyType

import torch

from .arch import Arch
from .errors import AlloyError
from .parsing import finite_float

FIELDS = ("IN", "OUT", "OUT2", "CONT", "BRI", "COL1", "COL2", "COL3")

#: Colour vectors (v_BRI, v_COL1, v_COL2, v_COL3) per family.
COLOUR_TABLES = MappingProxyType({
    "sd": ((-1.0, 1 / 3, 2 / 3), (1.0, 1.0, 0.0), (0.0, -1.0, -1.0), (1.0, 0.0, 1.0)),
    "sdxl": ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (-1.0, -1.0, 0.0), (-1.0, 1.0, 0.0)),
})
_TABLE_OF_ARCH = MappingProxyType({"sd1": "sd", "sd2": "sd", "sdxl": "sdxl"})


def parse_adjust(text: str | None) -> tuple[float, ...] | None:
    """8 comma-separated finite numbers → tuple; "" / None / all zero → None (off)."""
    s = (text or "").strip()
    if not s:
        return None
    parts = [p.strip() for p in s.split(",")]
    if len(parts) != len(FIELDS):
        raise AlloyError(f"Adjust needs exactly 8 numbers ({','.join(FIELDS)}), got {len(parts)}.")
    values = [finite_float(p, f"Adjust value {name}") for name, p in zip(FIELDS, parts)]
    return None if all(v == 0 for v in values) else tuple(values)


def validate_adjust(values: tuple[float, ...] | None, arch: Arch) -> None:
    """AlloyError when Adjust is requested for a family that has no Adjust tensors (Flux)."""
    if values is not None and arch.name not in _TABLE_OF_ARCH:
        raise AlloyError(f"Adjust is not available for {arch.label}.")


def colour_shift(values: tuple[float, ...], arch: Arch) -> tuple[float, float, float, float]:
    """The 4-channel addend of out.2.bias: (0.02·CONT, c₁, c₂, c₃)."""
    validate_adjust(values, arch)
    table = COLOUR_TABLES[_TABLE_OF_ARCH[arch.name]]
    bri_cols = values[4:8]
    c = [0.02 * sum(w * vec[j] for w, vec in zip(bri_cols, table)) for j in range(3)]
    return (0.02 * values[3], c[0], c[1], c[2])


def scale_for(role: str, values: tuple[float, ...]) -> float:
    """Multiplier of the five scaled tensors (see the module docstring)."""
    inn, out, out2 = values[0], values[1], values[2]
    return {"in_w": 1 - 0.01 * inn, "in_b": 1 + 0.02 * inn, "out0_w": 1 - 0.01 * out,
            "out0_b": 1 + 0.02 * out, "out2_w": 1 - 0.01 * out2}[role]


def apply_adjust(key: str, t: torch.Tensor, values: tuple[float, ...] | None, arch: Arch) -> torch.Tensor:
    """Adjusted copy of ``t`` when ``key`` is one of the six Adjust tensors; ``t`` itself otherwise."""
    if values is None:
        return t
    role = arch.adjust_role(key)
    if role is None:
        return t
    validate_adjust(values, arch)
    if role != "out2_b":
        return t * scale_for(role, values)
    if tuple(t.shape) != (4,):
        raise AlloyError(f"Adjust expects {key} to have 4 channels, but its shape is {tuple(t.shape)}.")
    return t + torch.tensor(colour_shift(values, arch), dtype=t.dtype, device=t.device)
