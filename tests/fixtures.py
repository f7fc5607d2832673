"""Tiny checkpoints with real key names (from merger/layouts) and reduced shapes, for tests."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import save_file

from merger import layouts

KEEP_DIMS = {"position_ids"}


@lru_cache(maxsize=None)
def layout_rows(arch: str) -> tuple:
    return tuple(layouts.load(arch)["tensors"])


def layout_keys(arch: str, default_only: bool = True, bare: bool = False) -> list[tuple[str, tuple, str]]:
    """(key, full shape, dtype name) of a real layout; Flux bare files use the alias names."""
    out = []
    for row in layout_rows(arch):
        key, shape, dtype, comp, optional, default = row[:6]
        alias = row[6] if len(row) > 6 else None
        if default_only and not default:
            continue
        if bare:
            if not alias:
                continue
            key = alias
        out.append((key, tuple(shape), dtype))
    return out


def tiny_shape(key: str, shape: tuple, cap: int = 6) -> tuple:
    if any(k in key for k in KEEP_DIMS):
        return shape
    return tuple(min(d, cap) if i != 1 or d > 9 else d for i, d in enumerate(shape))


def _values(key: str, seed: int, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(h)
    if not dtype.is_floating_point:
        n = shape[-1] if shape else 1
        return torch.arange(n, dtype=dtype).expand(shape).clone() if shape else torch.tensor(0, dtype=dtype)
    t = torch.randn(shape, generator=g, dtype=torch.float32) * 0.5 + 0.1
    return t.to(dtype)


_ST = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32}


def tiny_state_dict(arch: str = "sd1", seed: int = 0, dtype: torch.dtype | None = torch.float16,
                    cap: int = 6, bare: bool = False, default_only: bool = True) -> dict:
    sd = {}
    for key, shape, dname in layout_keys(arch, default_only=default_only, bare=bare):
        native = _ST[dname]
        dt = dtype if (dtype is not None and native.is_floating_point) else native
        sd[key] = _values(key, seed, tiny_shape(key, shape, cap), dt)
    return sd


def write_tiny(path, arch: str = "sd1", seed: int = 0, dtype: torch.dtype | None = torch.float16,
               metadata: dict | None = None, edit=None, **kw) -> Path:
    """Write a tiny checkpoint; `edit(sd)` may change the dict before saving."""
    sd = tiny_state_dict(arch, seed, dtype, **kw)
    if edit is not None:
        edit(sd)
    save_file(sd, str(path), metadata=metadata)
    return Path(path)
