"""Tiny SD1 checkpoints for the UI tests: the real SD1.5 key names, every dimension cut to ≤ 4."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from merger import layouts

DTYPES = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64, "I32": torch.int32}


def sd1_layout() -> list[tuple[str, list[int], str]]:
    """(key, shape, dtype) of the keys a real SD1.5 single file holds."""
    return [(r.key, list(r.shape), r.dtype) for r in layouts.rows("sd1") if r.default]


def write_tiny_sd1(path, seed: int, metadata: dict | None = None, dtype=torch.float16) -> Path:
    """Write a tiny SD1 checkpoint: every dimension min(d, 4), seeded normal values."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape, dt in sd1_layout():
        small = [min(int(d), 4) for d in shape]
        if DTYPES[dt] in (torch.int64, torch.int32):
            tensors[key] = torch.arange(max(1, small[-1] if small else 1), dtype=DTYPES[dt]).reshape(small or [])
        else:
            tensors[key] = torch.randn(small, generator=gen).to(dtype)
    save_file(tensors, str(path), metadata=metadata)
    return Path(path)
