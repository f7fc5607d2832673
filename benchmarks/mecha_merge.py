#!/usr/bin/env python3
"""sd-mecha weight-sum merge with SuperMerger-style block weights, for bench_merge.py.

Runs in its own venv (sd-mecha 1.1.x needs numpy 2; see setup_mecha_venv.sh). The recipe:

    alpha = convert(literal({BASE: v0, IN00: v1, …}, "<arch>-supermerger_blocks"), "<arch config>")
    out   = weighted_sum(A, B, alpha)           # (1 - α)·A + α·B per key, α from the key's block

with sd-mecha's defaults otherwise (merge in fp32 on the CPU, fp16 output, its own thread count
and buffer sizes). sd-mecha's SDXL block config has a 21st "VAE" block; it gets the BASE value,
as in our engine (VAE keys follow BASE). sd-mecha maps SD1 `time_embed` to BASE where SuperMerger
uses OUT11, so the SD1 outputs can differ on those keys; the cost is the same.
Usage: python mecha_merge.py --arch sd1 --model-a A --model-b B --alpha-blocks "v0,…" --out OUT
"""
from __future__ import annotations

import argparse
import sys

CONFIGS = {"sd1": "sd1-ldm", "sdxl": "sdxl-sgm"}
BLOCK_NAMES = {
    "sd1": ["BASE"] + [f"IN{i:02}" for i in range(12)] + ["M00"] + [f"OUT{i:02}" for i in range(12)],
    "sdxl": ["BASE"] + [f"IN{i:02}" for i in range(9)] + ["M00"] + [f"OUT{i:02}" for i in range(9)],
}


def block_dict(arch: str, values: list[float]) -> dict[str, float]:
    """Name → weight for sd-mecha's `<arch>-supermerger_blocks` config (SDXL: VAE = BASE)."""
    names = BLOCK_NAMES[arch]
    if len(values) != len(names):
        raise SystemExit(f"--alpha-blocks needs {len(names)} values for {arch}, got {len(values)}")
    blocks = dict(zip(names, values))
    if arch == "sdxl":
        blocks["VAE"] = blocks["BASE"]
    return blocks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=tuple(CONFIGS), required=True)
    p.add_argument("--model-a", required=True)
    p.add_argument("--model-b", required=True)
    p.add_argument("--alpha-blocks", help="comma list (26 for sd1, 20 for sdxl); omit for a plain weighted sum")
    p.add_argument("--alpha", type=float, default=0.5, help="plain weighted-sum alpha when --alpha-blocks is absent")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import sd_mecha  # imported late so --help works outside the mecha venv

    config = CONFIGS[args.arch]
    a = sd_mecha.model(args.model_a, config)
    b = sd_mecha.model(args.model_b, config)
    if args.alpha_blocks:
        values = [float(v) for v in args.alpha_blocks.split(",") if v.strip()]
        blocks = sd_mecha.literal(block_dict(args.arch, values), f"{args.arch}-supermerger_blocks")
        alpha = sd_mecha.convert(blocks, config)
    else:
        alpha = args.alpha
    recipe = sd_mecha.weighted_sum(a, b, alpha=alpha)
    sd_mecha.merge(recipe, output=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
