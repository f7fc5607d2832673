"""Block-weight editor logic (Gradio-free): sliders <-> comma text, presets, X/Y/Z axis values.

One slider panel edits either the alpha or the beta block list (the "target"). The panel has
`MAX_SLIDERS` sliders; the detected architecture decides how many are visible and their labels
(SD1/SD2 26, SDXL 20, Flux 61).
"""
from __future__ import annotations

import os

from ..errors import AlloyError
from .fields import _num

MAX_SLIDERS = 61
SLIDER_MIN, SLIDER_MAX, SLIDER_STEP = -1.0, 2.0, 0.01
ARCH_CHOICES = ("sd1", "sd2", "sdxl", "flux")
DEFAULT_ARCH = "sd1"
TARGETS = ("alpha", "beta")
SLIDER_NAMES = tuple(f"slider_{i}" for i in range(MAX_SLIDERS))


def get_arch(name: str):
    from ..arch import get_arch as _get_arch
    return _get_arch(name)


def block_ids(arch_name: str) -> tuple[str, ...]:
    """The block IDs of an architecture, BASE (Flux: CLIP) first."""
    return tuple(get_arch(arch_name or DEFAULT_ARCH).block_ids)


def format_blocks(values) -> str:
    """[0.5, 1.0, 0.25] -> "0.5,1,0.25" (the text form the merge accepts)."""
    return ",".join(_num(v) for v in values)


def values_from_text(text: str, arch_name: str, presets=None) -> list[float] | None:
    """Parse a block list (comma numbers or a preset name) for an architecture; "" -> None."""
    if not (text or "").strip():
        return None
    from ..weights import parse_block_list
    return parse_block_list(text, get_arch(arch_name or DEFAULT_ARCH), presets)


def slider_values(fields: dict, n: int) -> list[float]:
    """The first n slider values from fields (`slider_0` … ), None read as 0."""
    return [float(fields.get(SLIDER_NAMES[i]) or 0.0) for i in range(n)]


def slider_updates(arch_name: str, values, fallback: float = 0.5) -> dict:
    """gr.update()s that relabel the sliders for an architecture and set their values.

    values None -> every visible slider shows `fallback` (the scalar ratio: block weights off)."""
    import gradio as gr
    ids = block_ids(arch_name)
    vals = list(values) if values is not None else [fallback] * len(ids)
    out = {}
    for i, name in enumerate(SLIDER_NAMES):
        if i < len(ids):
            out[name] = gr.update(visible=True, label=ids[i], value=_clamp(vals[i]))
        else:
            out[name] = gr.update(visible=False)
    return out


def _clamp(v: float) -> float:
    """Slider range is −1…2; values outside it are shown at the edge (the text keeps the truth)."""
    return min(SLIDER_MAX, max(SLIDER_MIN, float(v)))


def text_field(target: str) -> str:
    """The text field the sliders write: "alpha" -> "alpha_blocks"."""
    if target not in TARGETS:
        raise AlloyError(f"The sliders edit alpha or beta, not '{target}'.")
    return f"{target}_blocks"


def detect_model_arch(host, model_name: str) -> str:
    """Architecture name of a model, read from its header ("sd1", "sd2", "sdxl" or "flux")."""
    from ..arch import detect
    from ..io import open_source
    path = host.resolve_model(model_name)
    src = open_source(path, label=f"model A ({os.path.basename(str(path))})")
    try:
        return detect(src.keys(), label=f"model A ({os.path.basename(str(path))})").name
    finally:
        src.close()


def quoted_axis_value(values) -> str:
    """A block list as one X/Y/Z value: quoted, because the plot splits values on commas."""
    return '"' + format_blocks(values) + '"'


def append_axis_value(axis_text: str, value: str) -> str:
    """Append one value to a comma-separated X/Y/Z value list."""
    axis_text = (axis_text or "").strip()
    return f"{axis_text},{value}" if axis_text else value


def preset_names(presets, arch_name: str) -> list[str]:
    """Preset names offered for an architecture ([] when there is no preset table)."""
    if presets is None:
        return []
    try:
        return list(presets.names(get_arch(arch_name or DEFAULT_ARCH)))
    except TypeError:  # a table whose names() takes no architecture
        return list(presets.names())


def preset_values(presets, name: str, arch_name: str) -> list[float]:
    """The block list of a preset for an architecture."""
    if presets is None:
        raise AlloyError("No presets are available.")
    arch = get_arch(arch_name or DEFAULT_ARCH)
    try:
        values = presets.get(name, arch)
    except TypeError:
        values = presets.get(name)
    if values is None:
        raise AlloyError(f"Unknown preset '{name}'.")
    if len(values) != len(arch.block_ids):  # a 26-value preset on SDXL
        values = values_from_text(format_blocks(values), arch.name, presets)
    return list(values)


def curve_values(fields: dict, which: str, arch, presets=None) -> tuple:
    """(values, ranges) for the editor's curve of the alpha or beta list.

    An empty alpha list is the alpha slider's value on every block; an empty beta list is no curve
    (None, None); a list with random tokens gives None values with (lo, hi) ranges at those blocks."""
    from ..arch import sdxl_26_to_20
    from ..dice import has_tokens, token_ranges
    text = (fields.get(f"{which}_blocks") or "").strip()
    n = len(arch.block_ids)
    if not text:
        return ([float(fields.get("alpha") or 0.0)] * n, None) if which == "alpha" else (None, None)
    if not has_tokens(text):
        return values_from_text(text, arch.name, presets), None
    limits = {k: fields.get(f"dice_{k}") for k in ("upper", "lower", "max", "min")}
    values, ranges = token_ranges(text, arch, {k: v for k, v in limits.items() if v not in (None, "")})
    if arch.name == "sdxl" and len(values) == 26:
        values, ranges = sdxl_26_to_20(values), sdxl_26_to_20(ranges)
    if len(values) != n:
        raise AlloyError(f"The {which} list has {len(values)} values; {arch.label} needs {n}.")
    return values, ranges
