#!/usr/bin/env python3
"""Multi-model merge benchmark: wall time and peak RSS of six-model merges, and the cost of an
alpha (λ) sweep with the derived-tensor cache.

1. Makes N synthetic fp16 checkpoints with `python -m merger.synth` (real key layout; full size, or
   every dimension capped with --tiny), unless they exist in --work.
2. Runs `python -m merger merge` for each --modes entry with A + the other N − 1 models (SLERP: A, B)
   under `/usr/bin/time -v`, and a two-model weight sum as the reference row.
3. --sweep: in one process, the first mode merged from the files three times (results dropped):
   at λ = 1 keeping each key's prepared task vector in a derived-tensor cache (DerivedStore), then
   at another λ without and with that cache (with it, only A is read and each key costs one add).

    python benchmarks/bench_multi.py --arch sd1 --models 6 --modes ties,task_arithmetic,model_stock --sweep
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from bench_merge import read_all, timed  # noqa: E402

SLOTS = "abcdef"


def make_models(work: Path, arch: str, n: int, tiny: int | None, python: str, full_over: float | None) -> list[Path]:
    paths = []
    tag = (f"_tiny{tiny}" if tiny else "") + (f"_full{full_over:g}M" if tiny and full_over else "")
    for i in range(n):
        p = work / f"{arch}_{i}{tag}.safetensors"
        if not p.exists():
            cmd = [python, "-m", "merger.synth", "--arch", arch, "--seed", str(i), "--out", str(p)]
            subprocess.run(cmd + (["--tiny", str(tiny)] if tiny else []), cwd=REPO, check=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
            if tiny and full_over:
                restore_largest(p, arch, full_over * 1e6, seed=i)
        paths.append(p)
    return paths


def restore_largest(path: Path, arch: str, min_numel: float, seed: int) -> None:
    """Give the keys of at least `min_numel` entries (the token embeddings) their full shape again, so
    small files hold the real largest tensors: the engine's memory peaks at its largest key."""
    import math

    import torch
    from safetensors.torch import load_file, save_file

    from merger import layouts
    sd = load_file(str(path))
    g = torch.Generator().manual_seed(1000 + seed)
    for row in layouts.rows(arch):
        if row.default and row.key in sd and math.prod(row.shape) >= min_numel:
            sd[row.key] = (torch.randn(tuple(row.shape), generator=g) * 0.02).to(sd[row.key].dtype)
    save_file(sd, str(path))


def cli_row(mode: str, paths: list[Path], work: Path, python: str, timeout: float):
    used = paths[:2] if mode in ("slerp", "weight_sum") else paths
    cmd = [python, "-m", "merger", "merge", "--mode", mode, "--dtype", "fp16", "--density", "0.3",
           "--out", str(work / f"out_{mode}.safetensors"), "--overwrite", "--quiet", "--device", "cpu"]
    for slot, p in zip(SLOTS, used):
        cmd += [f"--model-{slot}", str(p)]
    read_all(used)
    return len(used), timed(mode, cmd, work / f"{mode}.log", timeout)


class _Drop:
    """Engine sink that drops results (measures the merge, not a model's copy_)."""

    def begin(self, plan): pass
    def target(self, kp): return None
    def put(self, kp, tensor): pass
    def finish(self, report): pass
    def abort(self): pass


def sweep(mode: str, paths: list[Path], budget: int) -> list[tuple[str, float, int]]:
    """Three merges of one recipe read from the files (results dropped): the first keeps every
    key's prepared tensor in a derived-tensor cache of `budget` bytes; then λ changes without and
    with that cache."""
    from merger.cache import SourceCache, file_id
    from merger.engine import execute
    from merger.plan import build_plan, open_sources
    from merger.recipe import Recipe
    recipe = Recipe(**{f"model_{s}": str(p) for s, p in zip(SLOTS, paths)}, mode=mode, density=0.3)
    cache = SourceCache(budget)
    store = cache.derived(tuple(file_id(str(p)) for p in paths))
    steps = (("first merge (derived tensors kept)", 1.0, store),
             ("λ changed, without the derived cache", 0.5, None),
             ("λ changed, with the derived cache", 0.7, store))
    out = []
    for label, alpha, derived in steps:
        r = recipe.replace(alpha=alpha)
        sources = open_sources(r)
        try:
            plan = build_plan(r, sources)
            read_all(paths if derived is None or label.startswith("first") else paths[:1])
            before = cache.stats().derived_hits
            t0 = time.perf_counter()
            execute(plan, sources, _Drop(), device="cpu", derived=derived)
            out.append((label, time.perf_counter() - t0, cache.stats().derived_hits - before))
        finally:
            for src in sources.values():
                src.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sd1", choices=["sd1", "sdxl"])
    ap.add_argument("--models", type=int, default=6, choices=range(3, 7))
    ap.add_argument("--modes", default="ties,task_arithmetic,dare_ties,model_stock,geometric_median,slerp")
    ap.add_argument("--tiny", type=int, default=None, help="cap every dimension (quick runs)")
    ap.add_argument("--full-over", type=float, default=None,
                    help="with --tiny: keys of at least this many million entries keep their full shape")
    ap.add_argument("--work", default="/tmp/alloy-bench-multi")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--sweep", action="store_true", help="also time a λ sweep in-process (first mode)")
    ap.add_argument("--sweep-budget-gib", type=float, default=6.0, help="derived-tensor cache for --sweep")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = make_models(work, a.arch, a.models, a.tiny, a.python, a.full_over)
    size = sum(p.stat().st_size for p in paths) / len(paths) / 2**30
    shape = f" tiny {a.tiny}" if a.tiny else ""
    shape += f" (keys of ≥ {a.full_over:g} M entries full size)" if a.tiny and a.full_over else ""
    print(f"{a.models} × {a.arch}{shape} fp16 ({size:.2f} GiB each), load {os.getloadavg()[0]:.2f}")
    print("| mode | models | wall s | peak RSS GiB | CPU % |\n|---|---:|---:|---:|---:|")
    failed = 0
    for mode in ["weight_sum", *a.modes.split(",")]:
        n, m = cli_row(mode, paths, work, a.python, a.timeout)
        failed += m.rc != 0
        wall = f"{m.wall_s:.1f}" if m.wall_s is not None else "—"
        rss = f"{m.peak_rss_gib:.2f}" if m.peak_rss_gib is not None else "—"
        print(f"| {mode} | {n} | {wall} | {rss} | {m.cpu_pct or '—'} |{' ' + m.note if m.note else ''}")
    if a.sweep:
        mode = a.modes.split(",")[0]
        print(f"\nλ sweep, {mode}, {a.models} models, in one process (results dropped):")
        print("| step | seconds | derived-cache hits |\n|---|---:|---:|")
        for label, secs, hits in sweep(mode, paths, int(a.sweep_budget_gib * 2**30)):
            print(f"| {label} | {secs:.2f} | {hits} |")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    if not a.keep:
        for p in paths:
            p.unlink()
    for p in work.glob("out_*.safetensors"):
        p.unlink()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
