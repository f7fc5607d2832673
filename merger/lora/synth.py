"""Seeded random LoRAs for tests and benchmarks (kohya layout)."""
from __future__ import annotations

import torch

from merger.lora.keymap import build_index, kohya_target_kind


def random_module(name: str, out_dim: int, in_dim: int, rank: int, alpha: float, *, kernel=None,
                  gen: torch.Generator, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """One kohya module: down r×in[×k×k], up out×r[×1×1], scalar alpha."""
    if kernel is None:
        down = torch.randn(rank, in_dim, generator=gen) / in_dim ** 0.5
        up = torch.randn(out_dim, rank, generator=gen) / rank ** 0.5
    else:
        down = torch.randn(rank, in_dim, *kernel, generator=gen) / in_dim ** 0.5
        up = torch.randn(out_dim, rank, 1, 1, generator=gen) / rank ** 0.5
    return {f"{name}.lora_down.weight": down.to(dtype), f"{name}.lora_up.weight": up.to(dtype),
            f"{name}.alpha": torch.tensor(float(alpha))}


def lora_for_checkpoint(shapes: dict[str, tuple], arch: str, rank: int, alpha: float, *, seed: int = 0,
                        conv: bool = False, dtype=torch.float32, only=None) -> dict[str, torch.Tensor]:
    """A kohya-style LoRA on every kohya target of a checkpoint ({key: shape}): attention/MLP layers,
    plus ResNet/sampler layers with `conv`; OpenCLIP in-projections get q/k/v modules.
    `only(name)` filters modules."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, target in sorted(build_index(shapes, arch).items()):
        if only is not None and not only(name):
            continue
        shape = shapes[target.key]
        kind = kohya_target_kind(target.key, arch)
        if kind is None or (kind == "conv" and not conv):
            continue
        out_dim = shape[0] // 3 if target.rows is not None else shape[0]
        kernel = tuple(shape[2:]) if len(shape) == 4 else None
        in_flat = shape[1]
        r = min(rank, out_dim, in_flat)
        out.update(random_module(name, out_dim, in_flat, r, alpha, kernel=kernel, gen=gen, dtype=dtype))
    return out
