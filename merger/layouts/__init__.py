"""Real checkpoint key layouts as data: key names, shapes, native dtypes and components of the
single-file releases of SD1.5, SD2.x (768), SDXL base, SD3 and Flux (gzip JSON beside this file).

Used by the synthetic checkpoint writer (`merger.synth`), the tests and the benchmarks; the engine
itself maps keys from their names alone and never reads these files.

Row columns: key, shape, native dtype (safetensors name), component, optional (0/1), in the default
single file (0/1), and for Flux the bare-transformer alias of a `model.diffusion_model.` key."""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from ..errors import AlloyError

HERE = Path(__file__).resolve().parent
ARCHES = ("sd1", "sd2", "sdxl", "sd3", "flux")


class LayoutRow(NamedTuple):
    key: str
    shape: tuple[int, ...]
    dtype: str              # safetensors dtype name: F32, F16, BF16, I64, I32
    component: str          # clip_l, clip_g, clip_h, t5xxl, vae, diffuser, scheduler, ema
    optional: bool
    default: bool           # present in the default single-file release
    alias: str | None       # Flux: the key in bare transformer files


@lru_cache(maxsize=None)
def load(arch: str) -> dict:
    """The whole layout document of `arch` (format, arch, source, columns, components, tensors)."""
    if arch not in ARCHES:
        raise AlloyError(f"Unknown layout '{arch}'; choose one of: {', '.join(ARCHES)}.")
    with gzip.open(HERE / f"{arch}.json.gz", "rt", encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=None)
def rows(arch: str) -> tuple[LayoutRow, ...]:
    """Every tensor row of the layout, in the file's order."""
    out = []
    for r in load(arch)["tensors"]:
        alias = r[6] if len(r) > 6 and r[6] else None
        out.append(LayoutRow(r[0], tuple(int(d) for d in r[1]), r[2], r[3], bool(r[4]), bool(r[5]), alias))
    return tuple(out)


def select(arch: str, *, keys: str = "default", components=None, bare: bool = False) -> list[LayoutRow]:
    """Rows of one checkpoint file.

    keys: "default" (the keys of the usual single-file release), "required" (non-optional ones) or
    "all" (EMA copies included); components: an iterable of component names to keep (None = all);
    bare: Flux bare transformer files (only the diffuser, under its alias names)."""
    if keys not in ("default", "required", "all"):
        raise AlloyError(f"Unknown key set '{keys}'; choose default, required or all.")
    comps = set(components) if components else None
    out = []
    for row in rows(arch):
        if bare and not row.alias:
            continue
        if comps is not None and row.component not in comps:
            continue
        if keys == "default" and not row.default and (comps is None or row.optional):
            continue
        if keys == "required" and row.optional:
            continue
        out.append(row._replace(key=row.alias) if bare else row)
    if not out:
        raise AlloyError(f"No keys of the {arch} layout match components {sorted(comps or [])}.")
    return out


def keys(arch: str, **kw) -> list[str]:
    """Key names of `select(arch, **kw)`."""
    return [r.key for r in select(arch, **kw)]


def shapes(arch: str, **kw) -> dict[str, tuple[int, ...]]:
    """key → full shape of `select(arch, **kw)`."""
    return {r.key: r.shape for r in select(arch, **kw)}
