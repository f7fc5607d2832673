"""`python -m merger inspect FILE`: what a model file holds, from its header alone."""
from __future__ import annotations

import collections
import json
import os

from .errors import AlloyError
from .io import open_source
from .metadata import RECIPE_KEY


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def describe(path: str) -> dict:
    """Architecture, key and dtype counts, keys per block and the embedded recipe of a model file."""
    from .arch import detect

    with open_source(path, label="the file") as src:
        keys = src.keys()
        info = {"path": os.path.abspath(path), "size_bytes": os.path.getsize(path), "keys": len(keys)}
        dtypes = collections.Counter(_dtype_name(src.info(k).dtype) for k in keys)
        info["dtypes"] = dict(sorted(dtypes.items()))
        info["parameters"] = sum(_numel(src.info(k).shape) for k in keys)
        if any(k.startswith(("lora_", "lycoris_")) for k in keys):
            info["architecture"] = None
            info["note"] = "This is a LoRA; use `python -m merger lora inspect`."
        else:
            try:
                arch = detect(keys, label="the file")
                info["architecture"] = arch.name
                blocks = collections.Counter(arch.block_of(k) or "(not merged)" for k in keys)
                order = {b: i for i, b in enumerate(arch.block_ids)}
                info["blocks"] = dict(sorted(blocks.items(), key=lambda kv: order.get(kv[0], 10**6)))
            except AlloyError as e:
                info["architecture"] = None
                info["note"] = str(e)
        md = dict(src.metadata)
        recipe = md.pop(RECIPE_KEY, None)
        info["recipe"] = json.loads(recipe) if recipe else None
        info["metadata"] = md
    return info


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def format_description(info: dict) -> str:
    lines = [f"file:          {info['path']}",
             f"size:          {info['size_bytes'] / 2**30:.2f} GiB",
             f"architecture:  {info.get('architecture') or 'unknown'}",
             f"keys:          {info['keys']} ({info['parameters']:,} values)",
             "dtypes:        " + ", ".join(f"{k} {v}" for k, v in info["dtypes"].items())]
    if info.get("note"):
        lines.append(f"note:          {info['note']}")
    if info.get("blocks"):
        lines.append("keys per block:")
        lines += [f"  {b:<14} {n}" for b, n in info["blocks"].items()]
    if info.get("recipe"):
        lines.append("embedded Alloy recipe:")
        lines += ["  " + ln for ln in json.dumps(info["recipe"], indent=2).splitlines()]
    other = {k: v for k, v in info.get("metadata", {}).items()}
    if other:
        lines.append("metadata:")
        for k, v in other.items():
            v = str(v)
            lines.append(f"  {k}: {v if len(v) <= 200 else v[:200] + '…'}")
    return "\n".join(lines)
