"""Bake LoRAs into a checkpoint: W ← W + Σᵢ rᵢ·bᵢ(block)·ΔWᵢ, streamed key by key.

ΔWᵢ is the WebUI built-in Lora's `calc_updown` (scale alpha/rank included; LoRA/LoCon, LoHa,
LoKr), reshaped to the weight; OpenCLIP q/k/v modules land in row thirds of
`attn.in_proj_weight` (the WebUI's `torch.vstack([q, k, v])`); a 4-channel conv_in delta is
zero-padded for 9-channel inpainting / 8-channel pix2pix weights. Differences from the WebUI:
it casts LoRA weights to its compute dtype (usually fp16) and adds in the weight's dtype; here
ΔW and the sum are float32, and only the result is cast to the output dtype (no double rounding).
"""
from __future__ import annotations

import os
import time

import torch

from merger.errors import AlloyError, Interrupted
from merger.lora.blocks import LoraSpec
from merger.lora.common import LoraResult, block_weight_fn, common_arch, load_specs, pick_device
from merger.lora.keymap import build_index
from merger.lora.linalg import module_delta
from merger.lora.output import DTYPES, file_name, recipe_json, spec_names
from merger.precision import full_float32


def plan_bake(files, specs, arch: str, shapes: dict, presets, messages):
    """{checkpoint key: [(coefficient, LoraModule, rows)]} plus the unmatched module names."""
    index = build_index(shapes, arch)
    plan: dict[str, list] = {}
    unmatched: list[str] = []
    for f, s in zip(files, specs):
        bw = block_weight_fn(s, arch, presets, messages)
        for name, m in f.modules.items():
            t = index.get(name)
            if t is None:
                unmatched.append(f"{os.path.basename(f.path)}: {name}")
                continue
            c = s.ratio * bw(name)
            if c != 0.0:
                plan.setdefault(t.key, []).append((c, m, t.rows, f.path))
    return plan, unmatched


def fit_delta(delta: torch.Tensor, shape: tuple, name: str, key: str, path: str) -> torch.Tensor:
    """ΔW in the weight's shape; conv_in deltas with fewer input channels are zero-padded."""
    if tuple(delta.shape) == shape:
        return delta
    if delta.numel() == torch.Size(shape).numel():
        return delta.reshape(shape)
    if len(shape) == 4 and delta.dim() == 4 and delta.shape[0] == shape[0] and delta.shape[1] < shape[1] \
            and delta.shape[2:] == shape[2:]:
        return torch.nn.functional.pad(delta, (0, 0, 0, 0, 0, shape[1] - delta.shape[1]))
    raise AlloyError(f"{path}: module {name!r} has shape {tuple(delta.shape)} but {key!r} is {shape}; "
                     "is the LoRA for another model family?")


def key_delta(key: str, shape: tuple, parts, device) -> torch.Tensor:
    """Σ cᵢ·ΔWᵢ for one checkpoint key (float32)."""
    total = torch.zeros(shape, dtype=torch.float32, device=device)
    for c, m, rows, path in parts:
        if rows is None:
            total += c * fit_delta(module_delta(m, shape, device=device), shape, m.name, key, path)
        else:
            third = shape[0] // 3
            sub = (third,) + tuple(shape[1:])
            total[rows * third:(rows + 1) * third] += c * fit_delta(
                module_delta(m, sub, device=device), sub, m.name, key, path)
    return total


def out_dtype(name: str, native: torch.dtype) -> torch.dtype:
    if not native.is_floating_point or name == "keep":
        return native
    if name not in DTYPES:
        raise AlloyError(f"unknown dtype {name!r}; use fp16, bf16, fp32 or keep")
    return DTYPES[name]


@full_float32()
def bake(model: str, specs: list[LoraSpec], out: str, *, dtype: str = "fp16", overwrite: bool = False,
         presets: dict | None = None, device: str | None = "auto", progress=None, should_stop=None,
         hash_inputs: bool = True) -> LoraResult:
    """Write `model` with every LoRA in `specs` baked in to `out` (atomic; see module docstring)."""
    from merger.arch import detect
    from merger.io import SafetensorsWriter, open_source, sha256_file

    t0 = time.time()
    files = load_specs(specs)
    src = open_source(model, "model")
    try:
        keys = src.keys()
        shapes = {k: tuple(src.info(k).shape) for k in keys}
        arch = detect(keys, f"model ({model})", shapes).name
        larch = common_arch(files)
        if larch is not None and larch != arch and not {larch, arch} <= {"sd1", "sd2"}:
            raise AlloyError(f"{files[0].path} is a {larch} LoRA but {model} is a {arch} model")
        res = LoraResult("bake", arch=arch)
        plan, res.unmatched = plan_bake(files, specs, arch, shapes, presets, res.messages)
        if not plan and not res.unmatched:
            res.messages.append("no LoRA module has a non-zero weight; the model is copied")
        dev = pick_device(device)
        entries = [(k, out_dtype(dtype, src.info(k).dtype), shapes[k]) for k in keys]
        md = {"alloy_lora_recipe": recipe_json(
            "bake", model=file_name(model), dtype=dtype, loras=spec_names(specs),
            hashes=({"model": sha256_file(model), **{f"lora{i + 1}": sha256_file(s.path) for i, s in enumerate(specs)}}
                    if hash_inputs else {}))}
        with SafetensorsWriter(out, entries, md, overwrite=overwrite) as w:
            for i, (k, dt, shape) in enumerate(entries):
                if should_stop is not None and should_stop():
                    raise Interrupted(f"baking into {out} was stopped; nothing was written")
                t = src.read(k)
                if k in plan:
                    t = (t.to(dev, torch.float32) + key_delta(k, shape, plan[k], dev)).to(dt).cpu()
                w.write(k, t.to(dt))
                if progress:
                    progress(i + 1, len(entries), k)
            res.path = w.commit()
    finally:
        src.close()
    res.modules = sum(len(v) for v in plan.values())
    res.seconds = time.time() - t0
    return res
