"""`diff` speed and memory on full-size synthetic checkpoints, and the README's sample chart.

Makes A and B (`python -m merger.synth`, seeds 1 and 2) and AB = A × B merged with GRAD_V, reads
A and AB once (warm page cache, like a second look at the same files), then times
`python -m merger diff A AB` under `/usr/bin/time -v` (`--repeat` runs: best wall time, largest
peak RSS) and, with `--plot`, draws the chart of that comparison.

    python benchmarks/bench_diff.py --arch sd1 --work /tmp/alloy-bench --repeat 3 --plot docs/compare-sd15.png
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "merger", *map(str, args)], cwd=REPO, check=True,
                          capture_output=True, text=True, **kw)


def _make(work: Path, arch: str, tiny: int | None) -> tuple[Path, Path]:
    tag = f"{arch}_tiny{tiny}" if tiny else arch
    a, b, ab = (work / f"{tag}_{n}.safetensors" for n in ("1", "2", "ab"))
    for path, seed in ((a, 1), (b, 2)):
        if not path.exists():
            small = ["--tiny", str(tiny)] if tiny else []
            subprocess.run([sys.executable, "-m", "merger.synth", "--arch", arch, "--seed", str(seed), *small,
                            "--out", str(path)], cwd=REPO, check=True)
    if not ab.exists():
        _run(["merge", "--model-a", a, "--model-b", b, "--alpha-blocks", "GRAD_V", "--out", ab, "--quiet"])
    return a, ab


def _warm(*paths: Path) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def _timed(a: Path, b: Path) -> tuple[float, float]:
    """(wall s, peak RSS GiB) of one `diff` run."""
    p = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "merger", "diff", str(a), str(b), "--quiet"],
                       cwd=REPO, check=True, capture_output=True, text=True)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", p.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    h, m, s = (float(x or 0) for x in wall.groups())
    return h * 3600 + m * 60 + s, int(rss.group(1)) / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sd1", choices=["sd1", "sd2", "sdxl", "flux"])
    ap.add_argument("--work", default="/tmp/alloy-bench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--plot", help="write the chart of A against AB here (.png)")
    ap.add_argument("--tiny", type=int, help="every dimension cut to this (a quick check of the script)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ref, merged = _make(work, a.arch, a.tiny)
    _warm(ref, merged)
    runs = [_timed(ref, merged) for _ in range(a.repeat)]
    load = os.getloadavg()[0]
    result = {"arch": a.arch, "bytes": ref.stat().st_size + merged.stat().st_size,
              "wall_s": min(r[0] for r in runs), "peak_rss_gib": max(r[1] for r in runs),
              "runs": [round(r[0], 2) for r in runs], "load1": round(load, 2)}
    print(json.dumps(result, indent=2))
    if a.plot:
        _run(["diff", ref, merged, "--quiet", "--plot", a.plot, "--overwrite"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
