#!/usr/bin/env python3
"""Load-everything weight-sum merge: the reference way of merging that the WebUI's built-in merger and
SuperMerger use (both state dicts fully in memory, one fresh buffer per operation).

    out[k] = fp16((1 - α_block(k)) · fp32(A[k]) + α_block(k) · fp32(B[k]))   for float tensors
    out[k] = A[k]                                                           otherwise / unmapped keys

Block of a key (SuperMerger rules, as in merger/arch/sd.py and sdxl.py):
SD1 (26 values: BASE, IN00…IN11, M00, OUT00…OUT11): `time_embed` and `.out.` → OUT11,
`.input_blocks.N.` → IN(N), `.middle_block.` → M00, `.output_blocks.N.` → OUT(N), anything else → BASE.
SDXL (20 values: BASE, IN00…IN08, M00, OUT00…OUT08): no weight/bias in the key → not merged,
`label_emb`/`time_embed` → IN00, text encoders and VAE → BASE, `diffusion_model.out.` → OUT08,
input/middle/output blocks as for SD1, any other key → not merged.

Used by bench_merge.py as the "load everything" row; it runs in the project's venv.
Usage: python baseline_load_all.py --arch sd1 --model-a A --model-b B --alpha-blocks "v0,…" --out OUT
"""
from __future__ import annotations

import argparse
import re
import sys

import torch
from safetensors.torch import load_file, save_file

BLOCK_COUNT = {"sd1": 26, "sdxl": 20}
_IN = re.compile(r"\.input_blocks\.(\d+)\.")
_OUT = re.compile(r"\.output_blocks\.(\d+)\.")


def sd1_block_index(key: str) -> int:
    """Index into the 26-list: 0 BASE, 1+N IN(N), 13 M00, 14+N OUT(N); time_embed/.out. → 25 (OUT11)."""
    if "time_embed" in key or ".out." in key:
        return 25
    if m := _IN.search(key):
        return 1 + int(m.group(1))
    if ".middle_block." in key:
        return 13
    if m := _OUT.search(key):
        return 14 + int(m.group(1))
    return 0


def sdxl_block_index(key: str) -> int | None:
    """Index into the 20-list: 0 BASE, 1+N IN0N, 10 M00, 11+N OUT0N; None = not merged (keep A)."""
    if "weight" not in key and "bias" not in key:
        return None
    if "label_emb" in key or "time_embed" in key:
        return 1
    if key.startswith(("conditioner.embedders.", "first_stage_model.")):
        return 0
    if "model.diffusion_model.out." in key:
        return 19
    if m := _IN.search(key):
        return 1 + int(m.group(1))
    if ".middle_block." in key:
        return 10
    if m := _OUT.search(key):
        return 11 + int(m.group(1))
    return None


def block_index(arch: str, key: str) -> int | None:
    return sd1_block_index(key) if arch == "sd1" else sdxl_block_index(key)


def parse_blocks(text: str, arch: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if len(values) != BLOCK_COUNT[arch]:
        raise SystemExit(f"--alpha-blocks needs {BLOCK_COUNT[arch]} values for {arch}, got {len(values)}")
    return values


def merge_all(arch: str, a: dict, b: dict, alphas: list[float]) -> dict:
    """Weight sum of every float tensor present in both, in fp32, cast to fp16 (α = 0/1 pick A/B)."""
    out = {}
    for key, ta in a.items():
        tb = b.get(key)
        idx = block_index(arch, key)
        if tb is None or idx is None or not ta.is_floating_point() or ta.shape != tb.shape:
            out[key] = ta
            continue
        alpha = alphas[idx]
        if alpha == 0.0:
            merged = ta
        elif alpha == 1.0:
            merged = tb
        else:
            merged = (1.0 - alpha) * ta.float() + alpha * tb.float()
        out[key] = merged.to(torch.float16)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=tuple(BLOCK_COUNT), required=True)
    p.add_argument("--model-a", required=True)
    p.add_argument("--model-b", required=True)
    p.add_argument("--alpha-blocks", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    alphas = parse_blocks(args.alpha_blocks, args.arch)
    a = load_file(args.model_a)
    b = load_file(args.model_b)
    out = merge_all(args.arch, a, b, alphas)
    del a, b
    save_file(out, args.out, metadata={"format": "pt"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
