#!/usr/bin/env python3
"""Checkpoint-merge benchmark: our CLI vs sd-mecha vs a load-everything merge vs the I/O floor.

For each architecture (SD1.5 and/or SDXL) it makes two full-size fp16 checkpoints with
`python -m merger.synth` (real key layouts and shapes, seeded values), then times a weight sum with block weights (26 values for SD1.5,
20 for SDXL) to fp16 with each tool under `/usr/bin/time -v` (wall time and peak RSS), the page
cache warmed with both inputs before every run. The I/O floor is reading both inputs (warm cache)
plus writing and fsyncing a file of the output's size:  floor = read s + write s.
Prints a Markdown table and writes results-<arch>.json / .md into --work.

    ratio to floor = wall / floor          ratio to sd-mecha = wall / wall(sd-mecha)

Targets for our CLI: ≤ 3× the floor, ≤ 0.1× sd-mecha, peak RSS ≤ 1 GiB (SD1.5) / 1.5 GiB (SDXL).
See benchmarks/README.md for how to run it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from merger import synth  # noqa: E402
from bench_verify import compare_files  # noqa: E402

GIB = 2**30
CHUNK = 16 * 2**20
BLOCKS = {  # strictly inside (0, 1): α = 0 or 1 would let tools copy a tensor instead of merging
    "sd1": "0.3,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7,"
           "0.75,0.8,0.85,0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.6",
    "sdxl": "0.3,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.7,0.85,0.75,0.65,0.55,0.45,0.35,0.25,0.15,0.6",
}
LABEL = {"sd1": "SD1.5", "sdxl": "SDXL"}
RSS_TARGET_GIB = {"sd1": 1.0, "sdxl": 1.5}
FLOOR_TARGET, MECHA_TARGET = 3.0, 0.1
TOOLS = ("alloy", "sd-mecha", "load-all")
TOOL_TITLE = {"alloy": "alloy CLI (`python -m merger merge`)", "sd-mecha": "sd-mecha {version}, defaults",
              "load-all": "load everything (load_file → merge → save_file)"}


@dataclass
class Measurement:
    tool: str
    wall_s: float | None
    peak_rss_gib: float | None
    rc: int
    note: str = ""
    output_bytes: int | None = None
    cpu_pct: int | None = None  # "Percent of CPU this job got" (200 = both cores busy)


@dataclass
class ArchResult:
    arch: str
    inputs_bytes: int
    floor_read_s: float
    floor_write_s: float
    runs: list[Measurement] = field(default_factory=list)
    verify: str = ""
    machine: dict = field(default_factory=dict)

    @property
    def floor_s(self) -> float:
        return self.floor_read_s + self.floor_write_s

    def run(self, tool: str) -> Measurement | None:
        return next((m for m in self.runs if m.tool == tool and m.rc == 0), None)


# ---------------------------------------------------------------- /usr/bin/time -v parsing
def parse_elapsed(text: str) -> float:
    """'h:mm:ss' or 'm:ss.ss' → seconds."""
    secs = 0.0
    for part in text.strip().split(":"):
        secs = secs * 60 + float(part)
    return secs


def parse_time_v(text: str) -> tuple[float, float, int | None]:
    """GNU time -v report → (wall s, peak RSS GiB, CPU %); 'Maximum resident set size' is in KiB."""
    wall = re.search(r"Elapsed \(wall clock\) time \([^)]*\):\s*(\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
    cpu = re.search(r"Percent of CPU this job got:\s*(\d+)%", text)
    if not wall or not rss:
        raise ValueError("no wall time / peak RSS in the /usr/bin/time -v report")
    return parse_elapsed(wall.group(1)), int(rss.group(1)) * 1024 / GIB, cpu and int(cpu.group(1))


def timed(tool: str, cmd: list[str], log: Path, timeout: float, cwd: Path = REPO) -> Measurement:
    """Run cmd under /usr/bin/time -v; stdout/stderr go to log, the time report to log + '.time'."""
    report = log.with_name(log.name + ".time")
    full = ["/usr/bin/time", "-v", "-o", str(report), *cmd]
    with open(log, "w") as out:
        try:
            rc = subprocess.run(full, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return Measurement(tool, None, None, 124, f"timed out after {timeout:.0f} s")
    try:
        wall, rss, cpu = parse_time_v(report.read_text())
    except (OSError, ValueError) as e:
        return Measurement(tool, None, None, rc or 1, str(e))
    note = "" if rc == 0 else f"exit {rc}: " + _last_line(log)
    return Measurement(tool, wall, rss, rc, note, cpu_pct=cpu)


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"


# ---------------------------------------------------------------- I/O
def read_all(paths: list[Path]) -> float:
    """Read files fully into one reused buffer; returns seconds (also warms the page cache)."""
    buf = bytearray(CHUNK)
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - t0


def write_floor(path: Path, size: int) -> float:
    """Write `size` bytes (random, not zeros) front to back and fsync; returns seconds."""
    buf = memoryview(os.urandom(CHUNK))
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = size
        while left > 0:
            left -= f.write(buf[:min(CHUNK, left)])
        os.fsync(f.fileno())
    secs = time.perf_counter() - t0
    path.unlink()
    return secs


def ensure_checkpoints(arch: str, ckpt_dir: Path, keep: bool) -> tuple[Path, Path]:
    """A (seed 1) and B (seed 2), fp16; reused with --keep when they are the files synth would write."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, seed in (("A", 1), ("B", 2)):
        p = ckpt_dir / f"{arch}_{name}.safetensors"
        if not (keep and synth.matches(p, arch, seed=seed)):
            print(f"[{arch}] generating {p} …", flush=True)
            synth.write(p, arch, seed=seed, dtype="fp16", overwrite=True)
        paths.append(p)
    return paths[0], paths[1]


# ---------------------------------------------------------------- commands
def command(tool: str, arch: str, a: Path, b: Path, out: Path, args) -> list[str]:
    blocks = BLOCKS[arch]
    if tool == "alloy":
        return [args.python, "-m", "merger", "merge", "--model-a", str(a), "--model-b", str(b),
                "--mode", "weight_sum", "--alpha-blocks", blocks, "--dtype", "fp16", "--out", str(out),
                "--overwrite", "--quiet"]
    common = ["--arch", arch, "--model-a", str(a), "--model-b", str(b), "--out", str(out)]
    if tool == "sd-mecha":
        return [args.mecha_python, str(HERE / "mecha_merge.py"), *common, "--alpha-blocks", blocks]
    return [args.python, str(HERE / "baseline_load_all.py"), *common, "--alpha-blocks", blocks]


def mecha_version(python: str) -> str:
    r = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('sd-mecha'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "?"


def machine_info(args) -> dict:
    import torch
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    info = {"cpus": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1), "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_avg_1m": round(os.getloadavg()[0], 1)}  # > cpus: other work shared the machine
    if "sd-mecha" in args.tools:
        info["sd_mecha"] = mecha_version(args.mecha_python)
    return info


# ---------------------------------------------------------------- one architecture
def bench_arch(arch: str, args) -> ArchResult:
    work = Path(args.work)
    a, b = ensure_checkpoints(arch, work / "ckpt", args.keep)
    outs = work / "out"
    outs.mkdir(parents=True, exist_ok=True)
    res = ArchResult(arch, a.stat().st_size + b.stat().st_size, 0.0, 0.0, machine=machine_info(args))
    kept: dict[str, Path] = {}
    order = [t for t in ("load-all", "alloy", "sd-mecha") if t in args.tools]  # reference first
    for tool in order:
        out = outs / f"{arch}-{tool}.safetensors"
        m = None
        for i in range(args.repeat):  # best wall of N runs; peak RSS is the largest seen
            out.unlink(missing_ok=True)
            read_all([a, b])  # warm the page cache, same for every tool
            print(f"[{arch}] {tool} (run {i + 1}/{args.repeat}) …", flush=True)
            m = best(m, timed(tool, command(tool, arch, a, b, out, args), work / f"{arch}-{tool}.log", args.timeout))
            if m.rc != 0:
                break
        if m.rc == 0 and out.exists():
            m.output_bytes = out.stat().st_size
            kept[tool] = out
        elif m.rc == 0:
            m.rc, m.note = 1, "no output file"
        print(f"[{arch}] {tool}: {fmt(m.wall_s)} s, {fmt(m.peak_rss_gib, 2)} GiB, CPU {m.cpu_pct}% {m.note}",
              flush=True)
        res.runs.append(m)
        if tool == "alloy" and "load-all" in kept and "alloy" in kept and not args.no_verify:
            res.verify = "alloy vs load-all: " + compare_files(str(kept["load-all"]), str(kept["alloy"])).summary()
            print(f"[{arch}] {res.verify}", flush=True)
        verify_later = tool == "load-all" and "alloy" in args.tools and not args.no_verify
        for done in [t for t in kept if not (verify_later and t == "load-all")]:
            kept.pop(done).unlink(missing_ok=True)  # free disk and page cache before the next run
    for left in kept.values():
        left.unlink(missing_ok=True)
    out_size = next((m.output_bytes for m in res.runs if m.output_bytes), None) or a.stat().st_size
    read_all([a, b])
    res.floor_read_s = min(read_all([a, b]) for _ in range(2))
    res.floor_write_s = write_floor(outs / f"{arch}-floor.bin", out_size)
    print(f"[{arch}] I/O floor: read {res.floor_read_s:.2f} s + write {res.floor_write_s:.2f} s", flush=True)
    if not args.keep:
        a.unlink()
        b.unlink()
    return res


def best(prev: Measurement | None, new: Measurement) -> Measurement:
    """Keep the faster run's wall time and the larger peak RSS (a failed run wins, to be reported)."""
    if prev is None or new.rc != 0:
        return new
    fast = new if new.wall_s < prev.wall_s else prev
    fast.peak_rss_gib = max(prev.peak_rss_gib, new.peak_rss_gib)
    return fast


# ---------------------------------------------------------------- report
def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def render(res: ArchResult) -> str:
    """Markdown table + target lines for one architecture."""
    mecha = res.run("sd-mecha")
    title = f"### {LABEL[res.arch]} weight sum, {len(BLOCKS[res.arch].split(','))} block weights, fp16 → fp16"
    lines = [title, "", "| tool | wall s | peak RSS GiB | × I/O floor | × sd-mecha | CPU % |",
             "|---|---:|---:|---:|---:|---:|",
             f"| I/O floor (read A+B {res.floor_read_s:.2f} s + write {res.floor_write_s:.2f} s) | "
             f"{res.floor_s:.1f} | — | 1.0 | {ratio(res.floor_s, mecha and mecha.wall_s)} | — |"]
    for m in res.runs:
        name = TOOL_TITLE[m.tool].format(version=res.machine.get("sd_mecha", ""))
        if m.rc != 0:
            name += f" — failed ({m.note})"
        lines.append(f"| {name} | {fmt(m.wall_s)} | {fmt(m.peak_rss_gib, 2)} | {ratio(m.wall_s, res.floor_s)} | "
                     f"{ratio(m.wall_s, mecha and mecha.wall_s)} | {m.cpu_pct if m.cpu_pct is not None else '—'} |")
    lines += ["", *target_lines(res)]
    if res.verify:
        lines.append(f"- check: {res.verify}")
    mi = res.machine
    lines.append(f"- machine: {mi.get('cpus')} CPUs, {mi.get('mem_gib')} GiB, Python {mi.get('python')}, "
                 f"torch {mi.get('torch')}, load average {mi.get('load_avg_1m')} at start, {mi.get('date')}")
    return "\n".join(lines) + "\n"


def ratio(x: float | None, ref: float | None) -> str:
    return "—" if x is None or not ref else f"{x / ref:.2f}"


def target_lines(res: ArchResult) -> list[str]:
    ours, mecha = res.run("alloy"), res.run("sd-mecha")
    if ours is None:
        return ["- targets: alloy CLI not measured"]

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    floor_ok = ours.wall_s <= FLOOR_TARGET * res.floor_s
    mecha_ok = None if mecha is None else ours.wall_s <= MECHA_TARGET * mecha.wall_s
    rss_ok = ours.peak_rss_gib <= RSS_TARGET_GIB[res.arch]
    return [f"- target ≤ {FLOOR_TARGET:g}× I/O floor: {verdict(floor_ok)}",
            f"- target ≤ {MECHA_TARGET:g}× sd-mecha: {verdict(mecha_ok)}",
            f"- target peak RSS ≤ {RSS_TARGET_GIB[res.arch]:g} GiB: {verdict(rss_ok)}"]


def save(res: ArchResult, work: Path) -> None:
    data = asdict(res) | {"floor_s": res.floor_s, "blocks": BLOCKS[res.arch]}
    (work / f"results-{res.arch}.json").write_text(json.dumps(data, indent=2) + "\n")
    (work / f"results-{res.arch}.md").write_text(render(res))


# ---------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("sd1", "sdxl", "both"), default="sd1")
    p.add_argument("--work", default="/tmp/alloy-bench", help="checkpoints, outputs, logs, results (outside the repo)")
    p.add_argument("--keep", action="store_true", help="reuse/keep the generated checkpoints between runs")
    p.add_argument("--skip-mecha", action="store_true")
    p.add_argument("--skip-baseline", action="store_true", help="skip the load-everything merge")
    p.add_argument("--skip-alloy", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="don't compare our output with the baseline's")
    p.add_argument("--python", default=sys.executable, help="interpreter for our CLI and the baseline")
    p.add_argument("--mecha-python", default="/tmp/mecha-venv/bin/python",
                   help="interpreter of the sd-mecha venv (benchmarks/setup_mecha_venv.sh makes it)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measured command")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool; the table shows the best wall time")
    args = p.parse_args(argv)
    skip = {"alloy": args.skip_alloy, "sd-mecha": args.skip_mecha, "load-all": args.skip_baseline}
    args.tools = [t for t in TOOLS if not skip[t]]
    return args


def check_env(args) -> None:
    if not Path("/usr/bin/time").exists():
        sys.exit("/usr/bin/time is missing: install GNU time (Debian: apt-get install time)")
    if "sd-mecha" in args.tools and not Path(args.mecha_python).exists():
        sys.exit(f"{args.mecha_python} is missing: run `bash benchmarks/setup_mecha_venv.sh` or pass --skip-mecha")


def main(argv=None) -> int:
    args = parse_args(argv)
    check_env(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    arches = ("sd1", "sdxl") if args.arch == "both" else (args.arch,)
    failed = False
    for arch in arches:
        res = bench_arch(arch, args)
        save(res, work)
        print("\n" + render(res), flush=True)
        failed |= any(m.rc != 0 for m in res.runs)
    print(f"results in {work}/results-<arch>.json and .md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
