"""Plain request functions for the HTTP API (`POST /alloy/v1/lora/{bake,merge,extract,resize}`).

Each takes a JSON-like dict, validates it (AlloyError with one sentence) and returns the result
dict (`LoraResult.to_dict()`). `resolve_path(name, kind)` maps user names to files
(kind: "lora" | "model" | "out_lora" | "out_model"); the default keeps names as paths.
"""
from __future__ import annotations

import os
from typing import Callable

from merger.errors import AlloyError
from merger.lora.blocks import LoraSpec, parse_presets, parse_spec

Resolver = Callable[[str, str], str]


def _same(name: str, kind: str) -> str:
    return name


def _get(req: dict, key: str, typ, default=None, required=False):
    if not isinstance(req, dict):
        raise AlloyError("the request body must be a JSON object")
    if key not in req or req[key] is None:
        if required:
            raise AlloyError(f"the request needs '{key}'")
        return default
    v = req[key]
    try:
        return typ(v)
    except (TypeError, ValueError):
        raise AlloyError(f"'{key}' must be {typ.__name__}, got {v!r}") from None


def _specs(req: dict, resolve: Resolver) -> list[LoraSpec]:
    items = req.get("loras")
    if not isinstance(items, list) or not items:
        raise AlloyError("the request needs 'loras': a non-empty list")
    out = []
    for it in items:
        if isinstance(it, str):
            s = parse_spec(it)
        elif isinstance(it, dict) and "path" in it:
            s = LoraSpec(str(it["path"]), float(it.get("ratio", 1.0)), it.get("blocks") or None)
        else:
            raise AlloyError("each entry of 'loras' must be 'FILE:RATIO[:BLOCKS]' or {path, ratio, blocks}")
        out.append(LoraSpec(resolve(s.path, "lora"), s.ratio, s.blocks))
    return out


def bake(req: dict, resolve: Resolver = _same, progress=None) -> dict:
    from merger.lora.bake import bake as run
    return run(resolve(_get(req, "model", str, required=True), "model"), _specs(req, resolve),
               resolve(_get(req, "out", str, required=True), "out_model"),
               dtype=_get(req, "dtype", str, "fp16"), overwrite=_get(req, "overwrite", bool, False),
               presets=parse_presets(_get(req, "presets", str, "")), device=_get(req, "device", str, "auto"),
               progress=progress).to_dict()


def merge(req: dict, resolve: Resolver = _same, progress=None) -> dict:
    from merger.lora.merge import merge_loras
    mode = _get(req, "mode", str, "svd")
    return merge_loras(_specs(req, resolve), resolve(_get(req, "out", str, required=True), "out_lora"),
                       mode=mode, rank=_get(req, "rank", int, None), conv_rank=_get(req, "conv_rank", int, None),
                       clamp_quantile=_get(req, "clamp_quantile", float, None), dtype=_get(req, "dtype", str, "keep"),
                       overwrite=_get(req, "overwrite", bool, False), presets=parse_presets(_get(req, "presets", str, "")),
                       device=_get(req, "device", str, "auto"), progress=progress).to_dict()


def extract(req: dict, resolve: Resolver = _same, progress=None) -> dict:
    from merger.lora.extract import extract as run
    return run(resolve(_get(req, "tuned", str, required=True), "model"),
               resolve(_get(req, "base", str, required=True), "model"),
               resolve(_get(req, "out", str, required=True), "out_lora"), rank=_get(req, "rank", int, required=True),
               conv_rank=_get(req, "conv_rank", int, None), min_diff=_get(req, "min_diff", float, 0.01),
               clamp_quantile=_get(req, "clamp_quantile", float, 0.99), dtype=_get(req, "dtype", str, "fp16"),
               overwrite=_get(req, "overwrite", bool, False), device=_get(req, "device", str, "auto"),
               progress=progress).to_dict()


def resize(req: dict, resolve: Resolver = _same, progress=None) -> dict:
    from merger.lora.resize import resize_lora
    return resize_lora(resolve(_get(req, "lora", str, required=True), "lora"),
                       resolve(_get(req, "out", str, required=True), "out_lora"),
                       rank=_get(req, "rank", int, None), dynamic=_get(req, "dynamic", str, None),
                       param=_get(req, "param", float, None), dtype=_get(req, "dtype", str, "keep"),
                       overwrite=_get(req, "overwrite", bool, False), device=_get(req, "device", str, "auto"),
                       verbose=_get(req, "verbose", bool, False), progress=progress).to_dict()


OPERATIONS = {"bake": bake, "merge": merge, "extract": extract, "resize": resize}


def session_resolver(session, lora_dir: str | None = None) -> Resolver:
    """name, kind -> path: LoRAs relative to lora_dir, models through the host, outputs into
    lora_dir (LoRAs) or the host's models folder (checkpoints). Absolute paths pass through."""
    host = getattr(session, "host", None)
    if lora_dir is None and host is not None and hasattr(host, "lora_dir"):
        lora_dir = host.lora_dir()

    def resolve(name: str, kind: str) -> str:
        name = (name or "").strip()
        if not name:
            raise AlloyError(f"a {kind.replace('_', ' ')} name is needed")
        if os.path.isabs(name):
            return name
        if kind == "model" and host is not None:
            return host.resolve_model(name)
        if kind == "out_model":
            base = host.models_dir() if host is not None else os.getcwd()
            return os.path.join(base, name if name.endswith(".safetensors") else name + ".safetensors")
        base = lora_dir or os.getcwd()
        if kind == "out_lora" and not name.endswith(".safetensors"):
            name += ".safetensors"
        return os.path.join(base, name)
    return resolve


def create_lora_router(resolve_path: Resolver = _same, prefix: str = "/alloy/v1/lora"):
    """FastAPI router with POST /alloy/v1/lora/{bake,merge,extract,resize}; AlloyError → 400."""
    from fastapi import APIRouter, Body, HTTPException

    router = APIRouter(prefix=prefix)

    def endpoint(fn):
        def handler(req: dict = Body(...)):
            try:
                return fn(req, resolve_path)
            except AlloyError as e:
                raise HTTPException(status_code=400, detail=str(e)) from None
        return handler

    for name, fn in OPERATIONS.items():
        router.add_api_route(f"/{name}", endpoint(fn), methods=["POST"], name=f"alloy_lora_{name}")
    return router
