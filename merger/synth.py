"""Synthetic checkpoints with real key layouts: for the demo, benchmarks and large-file tests.

    python -m merger.synth --arch sd1 --seed 1 --out A.safetensors            # full size, ~2.1 GB fp16
    python -m merger.synth --arch sd1 --seed 2 --tiny 8 --out demo.safetensors  # every dim ≤ 8, ~2 MB

Keys, shapes and dtypes come from `merger.layouts` (the real single-file releases). Values are
seeded: each tensor has its own generator seeded with sha256(seed, key), so a tensor does not
depend on which other keys are written. Weights ~ N(0, 1/√fan_in), biases ~ N(0, 0.02), norm gains
(1-D weights) ~ 1 + N(0, 0.02), CLIP position ids = arange, logit_scale = ln 100, the SD1/SD2 DDPM buffers = the
real scaled-linear schedule (identical for every seed, as in real fine-tunes).

Streaming: the header is written first and tensors are made and written one at a time through the
atomic writer, so memory stays at about one tensor whatever the checkpoint's size."""
from __future__ import annotations

import argparse
import hashlib
import math
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from . import layouts
from .errors import AlloyError
from .io.dtypes import parse_dtype_name
from .io.writer import SafetensorsWriter

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "native": None}
# Kept at full size in tiny checkpoints: index tensors and the 1000-step schedule buffers.
_FULL_IN_TINY = ("position_ids",)


class Entry(NamedTuple):
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    component: str


def tiny_shape(key: str, shape: tuple, cap: int, component: str = "") -> tuple:
    """Each dimension min(d, cap), except position ids and schedule buffers (kept whole)."""
    if component == "scheduler" or key.rsplit(".", 1)[-1] in _FULL_IN_TINY:
        return tuple(shape)
    return tuple(min(int(d), cap) for d in shape)


def entries(arch: str, *, dtype: str = "fp16", tiny: int | None = None, keys: str = "default",
            components=None, bare: bool = False) -> list[Entry]:
    """(key, shape, dtype, component) of every tensor of the file, in the layout's order.

    Integer tensors keep their dtype; `dtype="native"` keeps every tensor's layout dtype."""
    if dtype not in DTYPES:
        raise AlloyError(f"Unknown precision '{dtype}'; choose one of: {', '.join(DTYPES)}.")
    if tiny is not None and tiny < 1:
        raise AlloyError(f"--tiny must be at least 1, not {tiny}.")
    out = []
    for row in layouts.select(arch, keys=keys, components=components, bare=bare):
        native = parse_dtype_name(row.dtype)
        dt = native if (DTYPES[dtype] is None or not native.is_floating_point) else DTYPES[dtype]
        shape = tiny_shape(row.key, row.shape, tiny, row.component) if tiny else row.shape
        out.append(Entry(row.key, tuple(shape), dt, row.component))
    return out


def key_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def ddpm_schedule(steps: int = 1000) -> dict[str, torch.Tensor]:
    """The DDPM buffers stored in SD1/SD2 ldm checkpoints: scaled-linear betas 0.00085 … 0.012."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, steps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    var = betas * (1.0 - prev) / (1.0 - ac)
    return {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": ac.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(), "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(), "posterior_variance": var,
        "posterior_log_variance_clipped": var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - prev) * alphas.sqrt() / (1.0 - ac),
    }


def make_tensor(e: Entry, seed: int, schedule: dict | None = None) -> torch.Tensor:
    """The seeded values of one entry (see the module docstring)."""
    leaf = e.key.rsplit(".", 1)[-1]
    n = math.prod(e.shape)
    if not e.dtype.is_floating_point:
        if leaf == "position_ids":
            return torch.arange(n, dtype=e.dtype).reshape(e.shape)
        return torch.zeros(e.shape, dtype=e.dtype)
    schedule = schedule if schedule is not None else ddpm_schedule()
    if e.component == "scheduler" and leaf in schedule and schedule[leaf].numel() == n:
        return schedule[leaf].to(e.dtype).reshape(e.shape)
    if leaf == "logit_scale":
        return torch.full(e.shape, math.log(100.0)).to(e.dtype)
    if leaf == "decay":
        return torch.full(e.shape, 0.9999).to(e.dtype)
    g = torch.Generator().manual_seed(key_seed(seed, e.key))
    t = torch.randn(e.shape, generator=g, dtype=torch.float32)
    if len(e.shape) >= 2:
        t.mul_(1.0 / math.sqrt(max(1, math.prod(e.shape[1:]))))
    elif leaf in ("weight", "scale"):        # 1-D weights are norm gains (GroupNorm, LayerNorm, RMSNorm)
        t.mul_(0.02).add_(1.0)
    else:
        t.mul_(0.02)
    return t.to(e.dtype)


def write(path, arch: str, *, seed: int = 0, dtype: str = "fp16", tiny: int | None = None,
          keys: str = "default", components=None, bare: bool = False, metadata: dict | None = None,
          overwrite: bool = False, progress=None) -> Path:
    """Write one synthetic checkpoint to `path` (atomic, streaming); returns the path."""
    items = entries(arch, dtype=dtype, tiny=tiny, keys=keys, components=components, bare=bare)
    schedule = ddpm_schedule()
    md = {"format": "pt", "alloy_synthetic": f"{arch} seed={seed}" + (f" tiny={tiny}" if tiny else "")}
    md.update(metadata or {})
    with SafetensorsWriter(str(path), [(e.key, e.dtype, e.shape) for e in items], md,
                           overwrite=overwrite) as writer:
        for i, e in enumerate(items):
            writer.write(e.key, make_tensor(e, seed, schedule))
            if progress is not None:
                progress(i + 1, len(items), e.key)
        writer.commit()
    return Path(path)


def matches(path, arch: str, *, seed: int = 0, dtype: str = "fp16", tiny: int | None = None, **kw) -> bool:
    """True when `path` is the file `write(path, arch, seed=…, …)` would make (same keys, shapes,
    dtypes and seed), so callers can reuse it instead of writing it again."""
    from .io import open_source
    try:
        src = open_source(str(path))
    except (AlloyError, OSError):
        return False
    try:
        want = entries(arch, dtype=dtype, tiny=tiny, **kw)
        tag = f"{arch} seed={seed}" + (f" tiny={tiny}" if tiny else "")
        if src.metadata.get("alloy_synthetic") != tag or len(src.keys()) != len(want):
            return False
        return all(e.key in src and tuple(src.info(e.key).shape) == e.shape and src.info(e.key).dtype == e.dtype
                   for e in want)
    finally:
        src.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m merger.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, choices=layouts.ARCHES)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="fp16", choices=tuple(DTYPES))
    p.add_argument("--tiny", type=int, help="cap every dimension at this size (small test/demo files)")
    p.add_argument("--keys", default="default", choices=("default", "required", "all"))
    p.add_argument("--components", help="comma-separated subset, e.g. diffuser or clip_l,vae")
    p.add_argument("--bare-keys", action="store_true", help="Flux: a bare transformer file")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    comps = [c.strip() for c in a.components.split(",") if c.strip()] if a.components else None
    try:
        out = write(a.out, a.arch, seed=a.seed, dtype=a.dtype, tiny=a.tiny, keys=a.keys, components=comps,
                    bare=a.bare_keys, overwrite=a.overwrite)
    except AlloyError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
