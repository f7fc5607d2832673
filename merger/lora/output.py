"""Writing LoRA files: kohya `ss_*` metadata, the additional-networks hash, the Alloy recipe.

`sshs_model_hash` is the additional-networks hash: sha256 of the file bytes after the header
(8-byte length + JSON header), i.e. of the tensor payload in file order. It is computed while
the tensors are streamed, so it matches the file that is committed.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import torch

from merger import __version__
from merger.errors import AlloyError

RECIPE_KEY = "alloy_lora_recipe"
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def parse_out_dtype(name: str | None, default: torch.dtype) -> torch.dtype:
    """'fp16'|'bf16'|'fp32' -> dtype; 'keep'/None -> `default`."""
    if name in (None, "", "keep"):
        return default
    if name not in DTYPES:
        raise AlloyError(f"unknown dtype {name!r}; use fp16, bf16, fp32 or keep")
    return DTYPES[name]


def network_metadata(arch: str | None, dim, alpha, *, conv_dim=None, conv_alpha=None,
                     output_name: str | None = None) -> dict[str, str]:
    """kohya's minimum network metadata (`build_minimum_network_metadata`): module, dim, alpha
    ("Dynamic" when ranks vary per module), conv args, v2 flag, base model version."""
    args = {} if conv_dim is None else {"conv_dim": str(conv_dim), "conv_alpha": str(conv_alpha)}
    md = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps(args),
        "ss_v2": str(arch == "sd2"),
        "ss_base_model_version": BASE_MODEL_VERSION.get(arch or "", "sd_v1"),
        "ss_training_comment": f"made by Alloy {__version__}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if output_name:
        md["ss_output_name"] = output_name
    return md


def dim_alpha_text(ranks: list[int], alphas: list[float], dynamic: bool) -> tuple[str, str]:
    """ss_network_dim / ss_network_alpha: "Dynamic" when asked or when modules differ."""
    if dynamic or len(set(ranks)) > 1 or len(set(alphas)) > 1:
        return "Dynamic", "Dynamic"
    if not ranks:
        return "0", "0"
    a = alphas[0]
    return str(ranks[0]), str(int(a) if float(a).is_integer() else a)


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
