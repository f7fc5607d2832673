"""Plain request functions for the HTTP API (`POST /alloy/v1/lora/{bake,merge,extract,resize}`).

Each takes a JSON-like dict, checks every field with merger.schema (types, ranges, real JSON
booleans: `"overwrite": "false"` is refused, not read as true) and returns the result dict
(`LoraResult.to_dict()`). `resolve_path(name, kind)` maps user names to files (kind: "lora" |
"model" | "out_lora" | "out_model"); `session_resolver` confines them to the host's model list and
its models / LoRA folders (merger.paths); the default `_same` keeps names as paths (library use).
"""
from __future__ import annotations

from typing import Any, Callable

from merger.errors import AlloyError
from merger.lora.blocks import LoraSpec, parse_presets, parse_spec
from merger.paths import input_file, output_file
from merger.schema import Custom, Flag, ListOf, Number, Text, check_object, describe

Resolver = Callable[[str, str], str]
WHERE = "The request"
RATIO_LIMIT = 100.0
MAX_RANK = 1 << 16


def _same(name: str, kind: str) -> str:
    return name


def _device(v, label):
    if not isinstance(v, str) or not (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()
                                                                        and len(v) < 12)):
        raise AlloyError(f'{label} must be "auto", "cpu", "cuda" or "cuda:N", not {describe(v)}.')
    return v


def _lora_item(v, label) -> LoraSpec:
    """"FILE:RATIO[:BLOCKS]" or {"path", "ratio", "blocks"}."""
    if isinstance(v, str):
        Text(4096).check(v, label)
        spec = parse_spec(v)
        Number(-RATIO_LIMIT, RATIO_LIMIT).check(spec.ratio, f"{label} ratio")
        return spec
    d = check_object(v, ITEM_SCHEMA, label, required=("path",))
    return LoraSpec(d["path"], d["ratio"], d["blocks"] or None)


ITEM_SCHEMA = {"path": Text(4096, nonempty=True), "ratio": Number(-RATIO_LIMIT, RATIO_LIMIT, default=1.0),
               "blocks": Text(10_000, optional=True)}
_OUT_DTYPES = ("fp16", "bf16", "fp32", "keep")
_RANK = Number(1, MAX_RANK, integer=True, optional=True)
_COMMON = {"out": Text(1024, nonempty=True), "overwrite": Flag(), "device": Custom(_device, default="auto")}
_LORAS = ListOf(Custom(_lora_item), max_len=64)
_PRESETS = Text(100_000, optional=True, line=False, default="")
SCHEMAS = {
    "bake": {**_COMMON, "model": Text(4096, nonempty=True), "loras": _LORAS, "presets": _PRESETS,
             "dtype": Text(16, choices=_OUT_DTYPES, default="fp16")},
    "merge": {**_COMMON, "loras": _LORAS, "mode": Text(16, choices=("svd", "concat"), default="svd"),
              "rank": _RANK, "conv_rank": _RANK, "clamp_quantile": Number(1e-9, 1, optional=True),
              "kohya_alpha": Flag(), "presets": _PRESETS, "dtype": Text(16, choices=_OUT_DTYPES, default="keep")},
    "extract": {**_COMMON, "tuned": Text(4096, nonempty=True), "base": Text(4096, nonempty=True),
                "rank": Number(1, MAX_RANK, integer=True), "conv_rank": _RANK,
                "min_diff": Number(0, 1e6, default=0.01), "clamp_quantile": Number(1e-9, 1, optional=True),
                "exact": Flag(), "dtype": Text(16, choices=_OUT_DTYPES, default="fp32")},
    "resize": {**_COMMON, "lora": Text(4096, nonempty=True), "rank": _RANK, "conv_rank": _RANK,
               "dynamic": Text(16, optional=True, choices=("sv_fro", "sv_ratio", "sv_cumulative")),
               "param": Number(-1e6, 1e6, optional=True), "verbose": Flag(),
               "dtype": Text(16, choices=_OUT_DTYPES, default="keep")},
}
REQUIRED = {"bake": ("model", "loras", "out"), "merge": ("loras", "out"), "extract": ("tuned", "base", "out", "rank"),
            "resize": ("lora", "out")}


def _check(op: str, req) -> dict:
    return check_object(req, SCHEMAS[op], WHERE, required=REQUIRED[op])


def _specs(r: dict, resolve: Resolver) -> list[LoraSpec]:
    return [LoraSpec(resolve(s.path, "lora"), s.ratio, s.blocks) for s in r["loras"]]


def bake(req: dict, resolve: Resolver = _same, progress=None) -> dict:
    from merger.lora.bake import bake as run
    r = _check("bake", req)
    return run(resolve(r["model"], "model"), _specs(r, resolve), resolve(r["out"], "out_model"),
               dtype=r["dtype"], overwrite=r["overwrite"], presets=parse_presets(r["presets"]),
               device=r["device"], progress=progress).to_dict()


def merge(req: dict, resolve: Resolver = _same, progress=None) -> dict:
    from merger.lora.merge import merge_loras
    r = _check("merge", req)
    return merge_loras(_specs(r, resolve), resolve(r["out"], "out_lora"), mode=r["mode"], rank=r["rank"],
                       conv_rank=r["conv_rank"], clamp_quantile=r["clamp_quantile"],
                       kohya_alpha=r["kohya_alpha"], dtype=r["dtype"],
                       overwrite=r["overwrite"], presets=parse_presets(r["presets"]), device=r["device"],
                       progress=progress).to_dict()


def extract(req: dict, resolve: Resolver = _same, progress=None) -> dict:
    from merger.lora.extract import extract as run
    r = _check("extract", req)
    return run(resolve(r["tuned"], "model"), resolve(r["base"], "model"), resolve(r["out"], "out_lora"),
               rank=r["rank"], conv_rank=r["conv_rank"], min_diff=r["min_diff"],
               clamp_quantile=r["clamp_quantile"], dtype=r["dtype"], exact=r["exact"], overwrite=r["overwrite"],
               device=r["device"], progress=progress).to_dict()


def resize(req: dict, resolve: Resolver = _same, progress=None) -> dict:
    from merger.lora.resize import resize_lora
    r = _check("resize", req)
    return resize_lora(resolve(r["lora"], "lora"), resolve(r["out"], "out_lora"), rank=r["rank"],
                       dynamic=r["dynamic"], param=r["param"], conv_rank=r["conv_rank"], dtype=r["dtype"],
                       overwrite=r["overwrite"],
                       device=r["device"], verbose=r["verbose"], progress=progress).to_dict()


OPERATIONS = {"bake": bake, "merge": merge, "extract": extract, "resize": resize}
LORA_EXTS = (".safetensors", ".pt", ".ckpt")


def session_resolver(session, lora_dir: str | None = None) -> Resolver:
    """name, kind -> path, confined by merger.paths: LoRAs inside lora_dir (default the host's
    LoRA folder), models through the host's model list, outputs into lora_dir (LoRAs) or the
    host's models folder (checkpoints). Absolute paths outside those folders are refused."""
    host = getattr(session, "host", None)
    if lora_dir is None and host is not None and hasattr(host, "lora_dir"):
        lora_dir = host.lora_dir()
    models_dir = host.models_dir() if host is not None else None

    def resolve(name: str, kind: str) -> str:
        if kind == "model" and host is not None:
            return host.resolve_model(name)
        if kind == "out_model":
            return output_file(models_dir or lora_dir, name)
        if kind == "out_lora":
            return output_file(lora_dir or models_dir, name, what="output LoRA")
        return input_file([lora_dir or models_dir], name, what="LoRA", exts=LORA_EXTS)
    return resolve


def create_lora_router(resolve_path: Resolver = _same, prefix: str = "/alloy/v1/lora", dependencies=None):
    """FastAPI router with POST /alloy/v1/lora/{bake,merge,extract,resize} (merger.http.answer:
    AlloyError → 400, anything unexpected → logged, 500 with a sentence)."""
    from fastapi import APIRouter, Body

    from merger.http import answer

    router = APIRouter(prefix=prefix, dependencies=list(dependencies or []))

    def endpoint(name, fn):
        def handler(req: Any = Body(None)):
            return answer(f"LoRA {name}", lambda: fn(req, resolve_path))
        return handler

    for name, fn in OPERATIONS.items():
        router.add_api_route(f"/{name}", endpoint(name, fn), methods=["POST"], name=f"alloy_lora_{name}")
    return router

