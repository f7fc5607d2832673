"""`python -m merger lora …` subcommands: bake, merge, extract, resize, inspect."""
from __future__ import annotations

import argparse
import json
import sys

from merger.errors import AlloyError
from merger.lora.blocks import parse_presets, parse_spec

DTYPE_CHOICES = ("fp16", "bf16", "fp32", "keep")


def add_lora_parser(subparsers) -> argparse.ArgumentParser:
    """Register `lora` (with its own subcommands) on an argparse subparsers object."""
    p = subparsers.add_parser("lora", help="LoRA tools: bake, merge, extract, resize, inspect")
    sub = p.add_subparsers(dest="lora_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="auto", help="auto|cpu|cuda (SVD and sums run there)")
    common.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    lora_arg = dict(action="append", required=True, metavar="FILE:RATIO[:BLOCKS]",
                    help="a LoRA, its strength and optional block weights (preset or comma list); repeatable")

    b = sub.add_parser("bake", parents=[common], help="bake LoRAs into a checkpoint")
    b.add_argument("--model", required=True)
    b.add_argument("--lora", **lora_arg)
    b.add_argument("--out", required=True)
    b.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp16")
    b.add_argument("--presets", help="LBW preset file (lines NAME:values)")

    m = sub.add_parser("merge", parents=[common], help="merge LoRAs into one LoRA")
    m.add_argument("--lora", **lora_arg)
    how = m.add_mutually_exclusive_group(required=True)
    how.add_argument("--concat", action="store_true", help="exact: stack the ranks")
    how.add_argument("--rank", type=int, help="SVD to this rank")
    m.add_argument("--conv-rank", type=int, help="rank for 3x3 conv modules (default: --rank)")
    m.add_argument("--clamp-quantile", type=float,
                   help="clamp the SVD factors at this quantile (default 0.99 as kohya; 1 = exact factors)")
    m.add_argument("--kohya-alpha", action="store_true",
                   help="with --concat: kohya merge_lora.py's weighting and alpha (its file, not the exact sum)")
    m.add_argument("--out", required=True)
    m.add_argument("--dtype", choices=DTYPE_CHOICES, default="keep")
    m.add_argument("--presets", help="LBW preset file (lines NAME:values)")

    e = sub.add_parser("extract", parents=[common], help="extract a LoRA from tuned − base")
    e.add_argument("--tuned", required=True)
    e.add_argument("--base", required=True)
    e.add_argument("--rank", type=int, required=True)
    e.add_argument("--conv-rank", type=int)
    e.add_argument("--out", required=True)
    e.add_argument("--min-diff", type=float, default=0.01)
    e.add_argument("--clamp-quantile", type=float, help="default 0.99 (kohya); 1 = no clamp")
    e.add_argument("--dtype", choices=DTYPE_CHOICES[:3], default="fp32")
    e.add_argument("--exact-svd", action="store_true", help="LAPACK SVD instead of the randomized top-k SVD")

    r = sub.add_parser("resize", parents=[common], help="resize a LoRA to a fixed or dynamic rank")
    r.add_argument("--lora", required=True)
    r.add_argument("--rank", type=int, help="fixed rank, or the maximum with --dynamic")
    r.add_argument("--dynamic", choices=("sv_fro", "sv_ratio", "sv_cumulative"))
    r.add_argument("--param", type=float)
    r.add_argument("--conv-rank", type=int, help="rank (or maximum) for 3x3 conv modules (default: --rank)")
    r.add_argument("--out", required=True)
    r.add_argument("--dtype", choices=DTYPE_CHOICES, default="keep")
    r.add_argument("--verbose", action="store_true", help="print retained fractions per module")

    i = sub.add_parser("inspect", help="arch, type, modules, ranks, alphas, metadata")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    return p


def _presets(path):
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return parse_presets(f.read())
    except OSError as e:
        raise AlloyError(f"cannot read the preset file {path}: {e.strerror}") from None


def _progress(done, total, name):
    if sys.stderr.isatty():
        print(f"\r{done}/{total}", end="" if done < total else "\n", file=sys.stderr)


def dispatch(a):
    if a.lora_command == "inspect":
        from merger.lora.info import describe, format_description
        d = describe(a.file)
        print(json.dumps(d, indent=1) if a.json else format_description(d))
        return None
    if a.lora_command == "bake":
        from merger.lora.bake import bake
        return bake(a.model, [parse_spec(s) for s in a.lora], a.out, dtype=a.dtype, overwrite=a.overwrite,
                    presets=_presets(a.presets), device=a.device, progress=_progress)
    if a.lora_command == "merge":
        from merger.lora.merge import merge_loras
        if not a.concat and a.rank is None:
            raise AlloyError("choose --concat or --rank N")
        return merge_loras([parse_spec(s) for s in a.lora], a.out, mode="concat" if a.concat else "svd",
                           rank=a.rank, conv_rank=a.conv_rank, clamp_quantile=a.clamp_quantile,
                           kohya_alpha=a.kohya_alpha, dtype=a.dtype,
                           overwrite=a.overwrite, presets=_presets(a.presets), device=a.device, progress=_progress)
    if a.lora_command == "extract":
        from merger.lora.extract import extract
        return extract(a.tuned, a.base, a.out, rank=a.rank, conv_rank=a.conv_rank, min_diff=a.min_diff,
                       clamp_quantile=a.clamp_quantile, dtype=a.dtype, exact=a.exact_svd, overwrite=a.overwrite,
                       device=a.device, progress=_progress)
    if a.lora_command == "resize":
        from merger.lora.resize import resize_lora
        return resize_lora(a.lora, a.out, rank=a.rank, dynamic=a.dynamic, param=a.param, conv_rank=a.conv_rank,
                           dtype=a.dtype,
                           overwrite=a.overwrite, device=a.device, verbose=a.verbose, progress=_progress)
    raise AlloyError(f"unknown lora command {a.lora_command!r}")


def run(args) -> int:
    """Run a parsed `lora` command; AlloyError → `error: <sentence>` on stderr, exit 2."""
    try:
        res = dispatch(args)
    except AlloyError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if res is None:
        return 0
    if getattr(args, "json", False):
        print(json.dumps(res.to_dict(), indent=1))
        return 0
    for line in res.messages:
        print(line)
    if res.unmatched:
        print(f"unmatched modules ({len(res.unmatched)}): " + ", ".join(res.unmatched[:20])
              + (" …" if len(res.unmatched) > 20 else ""))
    print(res.message())
    return 0


def main(argv=None) -> int:
    """Standalone entry (`python -m merger.lora.cli …`), the same as `python -m merger lora …`."""
    parser = argparse.ArgumentParser(prog="python -m merger")
    add_lora_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
