"""Benchmark: merge two SDXL-sized rank-32 LoRAs (+1.5 / −1.5) to rank 8 by SVD.

Ours: exact factored SVD (QR of the stacked factors + SVD of a 64×64 core), batched over modules
of one shape. Baseline: the plain loop — form ΔW, `torch.linalg.svd`, truncate — per module.
Prints both times and overall relative Frobenius errors (they must agree).

    python benchmarks/bench_lora.py --small          # 16 modules, seconds on a CPU
    python benchmarks/bench_lora.py --device cuda    # every SDXL module (the lead's full run)
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from anywhere

from merger.lora.common import LoraResult, overall
from merger.lora.formats import build_modules
from merger.lora.merge import merge_svd
from merger.lora.synth import lora_for_checkpoint

def sdxl_shapes() -> dict[str, tuple]:
    from merger import layouts
    return layouts.shapes("sdxl")


def make_modules(small: bool):
    shapes = sdxl_shapes()
    only = (lambda n: "input_blocks_4_1_transformer_blocks_0_" in n
            or "lora_te1_text_model_encoder_layers_0_" in n) if small else None
    a = build_modules(lora_for_checkpoint(shapes, "sdxl", 32, 16.0, seed=1, only=only), "LoRA big")
    b = build_modules(lora_for_checkpoint(shapes, "sdxl", 32, 16.0, seed=2, only=only), "LoRA small")
    return {n: [(1.5, a[n]), (-1.5, b[n])] for n in a}


def ours(modules, rank, dev):
    res, tensors, norms, errs = LoraResult("merge"), {}, [], []
    merge_svd(modules, rank, rank, 1.0, dev, tensors, res, norms, errs, [], None)
    return overall(norms, errs)


def baseline(modules, rank, dev):
    n2 = e2 = 0.0
    for parts in modules.values():
        d = sum(c * (m.weights["lora_up.weight"].to(dev).float().flatten(1) * m.scale)
                @ m.weights["lora_down.weight"].to(dev).float().flatten(1) for c, m in parts)
        U, S, Vh = torch.linalg.svd(d, full_matrices=False)
        approx = (U[:, :rank] * S[:rank]) @ Vh[:rank]
        n2 += float((d.double() ** 2).sum())
        e2 += float(((d - approx).double() ** 2).sum())
    return math.sqrt(e2 / n2)


def timed(fn, *args, dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn(*args)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="one SDXL transformer block + one CLIP-L layer")
    p.add_argument("--every", type=int, default=1,
                   help="keep every N-th module (same set for both methods; the plain loop takes "
                        "~40 min for all SDXL modules on 2 CPU cores)")
    p.add_argument("--skip-baseline", action="store_true", help="time only ours")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    modules = make_modules(a.small)
    modules = {n: m for i, (n, m) in enumerate(sorted(modules.items())) if i % a.every == 0}
    print(f"{len(modules)} modules, rank 32 + 32 -> {a.rank}, device {dev}")
    e_ours, t_ours = timed(ours, modules, a.rank, dev, dev=dev)
    print(f"ours (factored, batched): {t_ours:8.2f} s   overall relative error {e_ours:.6f}")
    if a.skip_baseline:
        return
    e_base, t_base = timed(baseline, modules, a.rank, dev, dev=dev)
    print(f"plain per-module svd:     {t_base:8.2f} s   overall relative error {e_base:.6f}")
    print(f"speed-up {t_base / max(t_ours, 1e-9):.1f}x, error difference {abs(e_ours - e_base):.2e}")


if __name__ == "__main__":
    main()
