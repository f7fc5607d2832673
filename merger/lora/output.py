"""Writing LoRA files: kohya `ss_*` metadata, the additional-networks hash, the Alloy recipe.

`sshs_model_hash` is the additional-networks hash: sha256 of the file bytes after the header
(8-byte length + JSON header), i.e. of the tensor payload in file order. It is computed while
the tensors are streamed, so it matches the file that is committed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time

import torch

from merger import __version__
from merger.errors import AlloyError

RECIPE_KEY = "alloy_lora_recipe"
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}
MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base",
                  "flux": "flux-1-dev"}
MODELSPEC_IMPL = {"sdxl": "https://github.com/Stability-AI/generative-models",
                  "flux": "https://github.com/black-forest-labs/flux"}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def parse_out_dtype(name: str | None, default: torch.dtype) -> torch.dtype:
    """'fp16'|'bf16'|'fp32' -> dtype; 'keep'/None -> `default`."""
    if name in (None, "", "keep"):
        return default
    if name not in DTYPES:
        raise AlloyError(f"unknown dtype {name!r}; use fp16, bf16, fp32 or keep")
    return DTYPES[name]


def file_name(path: str | None) -> str | None:
    """A file's name without its folder: what metadata records (never a local path)."""
    return None if path is None else re.split(r"[\\/]", os.fspath(path).rstrip("/\\"))[-1]


def spec_names(specs) -> list[dict]:
    """LoRA inputs for a recipe: file name, ratio, blocks."""
    return [{**s.to_dict(), "path": file_name(s.path)} for s in specs]


def kohya_number(x: float, as_float: bool) -> str:
    """An alpha / rank as kohya's scripts print it: `str(float(x))` ("8.0") or `str(int)` ("8")."""
    return str(float(x)) if as_float or not float(x).is_integer() else str(int(x))


def kohya_dims(entries, as_float: bool) -> dict:
    """ss_network_dim/alpha and conv_dim/conv_alpha from [(rank, alpha, is 3×3 conv)] per module:
    the common value of the linear (resp. 3×3) modules, "Dynamic" when they differ; conv_* None
    when no 3×3 module is written. Alphas print as kohya's script for the operation does."""
    def common(vals, fmt):
        vals = set(vals)
        return fmt(next(iter(vals))) if len(vals) == 1 else ("Dynamic" if vals else None)
    lin = [(r, a) for r, a, c in entries if not c] or [(r, a) for r, a, c in entries]
    conv = [(r, a) for r, a, c in entries if c]
    num = lambda x: kohya_number(x, as_float)      # noqa: E731
    return {"dim": common([r for r, _ in lin], str) or "0", "alpha": common([a for _, a in lin], num) or "0",
            "conv_dim": common([r for r, _ in conv], str), "conv_alpha": common([a for _, a in conv], num)}


def network_metadata(arch: str | None, dim, alpha, *, conv_dim=None, conv_alpha=None,
                     title: str | None = None, merged_from: list[str] | None = None) -> dict[str, str]:
    """kohya's minimum network metadata (`build_minimum_network_metadata`): module, dim, alpha,
    `ss_network_args` (JSON; `conv_dim`/`conv_alpha` as strings when 3×3 conv modules are written,
    "{}" otherwise), v2 flag, base model version, and the SAI `modelspec.*` keys kohya adds
    (architecture, title = output file stem, date, merged_from = input names)."""
    args = {} if conv_dim is None else {"conv_dim": str(conv_dim), "conv_alpha": str(conv_alpha)}
    md = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps(args),
        "ss_v2": str(arch == "sd2"),
        "ss_base_model_version": BASE_MODEL_VERSION.get(arch or "", "sd_v1"),
        "ss_training_comment": f"made by Alloy {__version__}",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": MODELSPEC_ARCH.get(arch or "", "stable-diffusion-v1") + "/lora",
        "modelspec.implementation": MODELSPEC_IMPL.get(arch or "", "diffusers"),
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if title:
        md["modelspec.title"] = os.path.splitext(file_name(title))[0]
    if merged_from:
        md["modelspec.merged_from"] = ", ".join(os.path.splitext(file_name(p))[0] for p in merged_from)
    return md


def recipe_json(op: str, **fields) -> str:
    return json.dumps({"type": "alloy-lora", "op": op, "version": __version__, **fields}, sort_keys=True)


def save_lora(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *,
              dtype: torch.dtype, overwrite: bool = False) -> str:
    """Write `tensors` (float ones cast to `dtype`, alphas kept float32-compatible) in sorted key
    order through the atomic writer; adds `sshs_model_hash`. Returns the written path."""
    from merger.io import SafetensorsWriter

    ordered = []
    for key in sorted(tensors):
        t = tensors[key].detach().cpu()
        t = t.to(dtype) if t.is_floating_point() else t
        ordered.append((key, t.contiguous()))
    entries = [(k, t.dtype, tuple(t.shape)) for k, t in ordered]
    h = hashlib.sha256()
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise AlloyError(f"output folder {folder} does not exist")
    w = SafetensorsWriter(path, entries, dict(metadata), overwrite=overwrite)
    try:
        for key, t in ordered:
            if t.numel():
                h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            w.write(key, t)
        w.set_metadata({**metadata, "sshs_model_hash": h.hexdigest()})
        return w.commit()
    except BaseException:
        w.abort()
        raise


def addnet_hash(path: str) -> str:
    """sha256 of a .safetensors file's bytes after its header (additional-networks hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
