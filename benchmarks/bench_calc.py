#!/usr/bin/env python3
"""Calculation-mode file merges: wall time and peak RSS of `python -m merger merge` per calc mode.

Three full-size fp16 checkpoints A, B, C (seeds 1, 2, 3) made by `python -m merger.synth` (real
key layout and shapes), fp32 math, fp16 output, each command under `/usr/bin/time -v` after the
inputs were read once (warm page cache), best wall time of --repeat runs (peak RSS: the largest).
Floors measured in the same run: the I/O floor (read the inputs a mode uses + write and fsync a
file of the output's size) and a plain weight sum of the same files (calc "normal").

    python benchmarks/bench_calc.py --arch sd1 --keep --repeat 3            # all modes, CPU
    python benchmarks/bench_calc.py --calc cosineA,smoothAdd --device cuda

Targets (issue #9, SD1.5 on 2 cores): cosineA / cosineB ≤ 21 s, extract ≤ 15 s, smoothAdd ≤ 60 s
(≤ 5 s on a GPU), each ≤ 1 GiB peak RSS. Writes results-calc-<arch>.json / .md into --work.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_merge import LABEL, best, fmt, read_all, timed, write_floor  # noqa: E402
from merger import synth  # noqa: E402

# name → (mode, calc, extra arguments, models used, target wall s on the CPU)
MODES = {
    "normal": ("weight_sum", "normal", ["--alpha", "0.3"], "ab", None),
    "cosineA": ("weight_sum", "cosineA", ["--alpha", "0.3"], "ab", 21.0),
    "cosineB": ("weight_sum", "cosineB", ["--alpha", "0.3"], "ab", 21.0),
    "trainDifference": ("add_difference", "trainDifference", ["--alpha", "0.5"], "abc", None),
    "extract": ("add_difference", "extract", ["--alpha", "0.3", "--beta", "0.6", "--gamma", "1.5"], "abc", 15.0),
    "smoothAdd": ("add_difference", "smoothAdd", ["--alpha", "0.5"], "abc", 60.0),
}
RSS_TARGET_GIB = 1.0


def checkpoints(arch: str, folder: Path, keep: bool, tiny: int | None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for slot, seed in (("a", 1), ("b", 2), ("c", 3)):
        p = folder / f"{arch}_{slot.upper()}{f'_tiny{tiny}' if tiny else ''}.safetensors"
        if not (keep and synth.matches(p, arch, seed=seed, tiny=tiny)):
            print(f"[{arch}] generating {p} …", flush=True)
            synth.write(p, arch, seed=seed, dtype="fp16", tiny=tiny, overwrite=True)
        paths[slot] = p
    return paths


def command(args, name: str, paths: dict, out: Path) -> list[str]:
    mode, calc, extra, used, _ = MODES[name]
    cmd = [args.python, "-m", "merger", "merge", "--model-a", str(paths["a"]), "--model-b", str(paths["b"])]
    if "c" in used:
        cmd += ["--model-c", str(paths["c"])]
    return cmd + ["--mode", mode, "--calc", calc, *extra, "--dtype", "fp16", "--device", args.device,
                  "--out", str(out), "--overwrite", "--quiet"]


def render(arch: str, rows: list, floors: dict, info: dict) -> str:
    normal = next((r for r in rows if r["name"] == "normal" and r["rc"] == 0), None)
    lines = [f"### {LABEL[arch]} calculation modes, fp16 → fp16, fp32 math, --device {info['device']}", "",
             "| calc | wall s | peak RSS GiB | × weight sum | target (CPU) | CPU % |", "|---|---:|---:|---:|---|---:|"]
    for used, secs in floors.items():
        lines.append(f"| I/O floor ({'+'.join(used.upper())} read + write) | {secs:.1f} | — | — | — | — |")
    for r in rows:
        ratio = f"{r['wall_s'] / normal['wall_s']:.1f}" if normal and r["wall_s"] else "—"
        target = MODES[r["name"]][4]
        verdict = "—" if target is None or r["wall_s"] is None else (
            f"≤ {target:g} s, ≤ {RSS_TARGET_GIB:g} GiB: "
            f"{'PASS' if r['wall_s'] <= target and r['peak_rss_gib'] <= RSS_TARGET_GIB else 'FAIL'}")
        name = r["name"] + ("" if r["rc"] == 0 else f" — failed ({r['note']})")
        lines.append(f"| {name} | {fmt(r['wall_s'])} | {fmt(r['peak_rss_gib'], 2)} | {ratio} | {verdict} | "
                     f"{r['cpu_pct'] if r['cpu_pct'] is not None else '—'} |")
    lines.append("")
    lines.append(f"- machine: {info['cpus']} CPUs, torch {info['torch']}, {info['date']}, load average "
                 f"{info['load_start']} at start, {info['load_end']} at the end (> CPUs: other work shared it)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("sd1", "sdxl"), default="sd1")
    p.add_argument("--calc", default=",".join(MODES), help="comma list of: " + ", ".join(MODES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="/tmp/alloy-bench", help="checkpoints, outputs, logs, results")
    p.add_argument("--keep", action="store_true", help="reuse/keep the generated checkpoints")
    p.add_argument("--tiny", type=int, default=None, help="every dimension ≤ N (a quick check of the script)")
    p.add_argument("--repeat", type=int, default=1, help="runs per mode; the table shows the best wall time")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--timeout", type=float, default=3600)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.calc.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown or not Path("/usr/bin/time").exists():
        sys.exit(f"unknown calc mode(s): {', '.join(unknown)}" if unknown
                 else "/usr/bin/time is missing (apt-get install time)")
    import torch
    work = Path(args.work)
    paths = checkpoints(args.arch, work / "ckpt", args.keep, args.tiny)
    out = work / "out" / f"{args.arch}-calc.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"cpus": os.cpu_count(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_start": round(os.getloadavg()[0], 1), "device": args.device}
    rows = []
    for name in names:
        used = [paths[s] for s in MODES[name][3]]
        m = None
        for i in range(args.repeat):
            out.unlink(missing_ok=True)
            read_all(used)
            print(f"[{args.arch}] {name} (run {i + 1}/{args.repeat}) …", flush=True)
            m = best(m, timed(name, command(args, name, paths, out), work / f"{args.arch}-calc-{name}.log",
                              args.timeout))
            if m.rc != 0:
                break
        print(f"[{args.arch}] {name}: {fmt(m.wall_s)} s, {fmt(m.peak_rss_gib, 2)} GiB, CPU {m.cpu_pct}% {m.note}",
              flush=True)
        rows.append({"name": name, "wall_s": m.wall_s, "peak_rss_gib": m.peak_rss_gib, "rc": m.rc,
                     "note": m.note, "cpu_pct": m.cpu_pct})
    size = out.stat().st_size if out.exists() else paths["a"].stat().st_size
    out.unlink(missing_ok=True)
    floors = {}
    for used in sorted({MODES[n][3] for n in names}):
        files = [paths[s] for s in used]
        read_all(files)
        floors[used] = min(read_all(files) for _ in range(2)) + write_floor(work / "out" / "floor.bin", size)
    info["load_end"] = round(os.getloadavg()[0], 1)
    text = render(args.arch, rows, floors, info)
    (work / f"results-calc-{args.arch}.md").write_text(text)
    (work / f"results-calc-{args.arch}.json").write_text(json.dumps({"rows": rows, "floors": floors, "info": info},
                                                                    indent=2) + "\n")
    print("\n" + text)
    return 1 if any(r["rc"] != 0 for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
