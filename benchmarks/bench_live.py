"""Live-merge speed: SD1.5 fp32 model in RAM on the CPU.

Times (1) the first live merge (sources read from disk into the cache), (2) a re-merge after an
alpha change (sources cached: asserts no file reads), against (3) one `torch.lerp` pass over the
model's float tensors with A and B already in RAM (the floor for any weighted sum).

    python benchmarks/bench_live.py --workdir /tmp/alloy-bench          # full size (~3.4 GB per file)
Full size needs ~11 GB of RAM (model 3.4 GB + cached A and B 6.8 GB).

    python benchmarks/bench_live.py --small                              # tiny shapes, quick check
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "webui_standin"))

from merger.recipe import Recipe  # noqa: E402
from merger.session import Host, Session  # noqa: E402
from merger.settings import Settings  # noqa: E402


class ModuleHost(Host):
    """A loaded module whose weights came from `path` (no WebUI)."""

    def __init__(self, model, path):
        self.model, self.path = model, path

    def live_model(self):
        return self.model

    def loaded_model_path(self):
        return self.path

    def resolve_model(self, name):
        return name


class CountingOpener:
    def __init__(self):
        self.reads = 0

    def __call__(self, path, label):
        from merger.io import open_source
        src = open_source(path, label)
        orig = src.read

        def read(key, *a, **kw):
            self.reads += 1
            return orig(key, *a, **kw)
        src.read = read
        return src


def make_files(work: Path, small: bool) -> tuple[str, str]:
    a, b = work / "A.safetensors", work / "B.safetensors"
    if small:
        import tinysd
        entries = tinysd.layout()
        for p, seed in ((a, 1), (b, 2)):
            if not p.exists():
                tinysd.write_checkpoint(p, seed, torch.float32, entries)
        return str(a), str(b)
    from merger import synth
    for p, seed in ((a, 1), (b, 2)):
        if not synth.matches(p, "sd1", seed=seed, dtype="fp32"):
            synth.write(p, "sd1", seed=seed, dtype="fp32", overwrite=True)
    return str(a), str(b)


def load_model(path: str, small: bool):
    import tinysd
    from safetensors.torch import load_file
    entries = tinysd.layout(full=not small)
    with torch.device("meta"):
        model = tinysd.build_model(entries, torch.float32)
    model = model.to_empty(device="cpu")
    model.load_state_dict(load_file(path), strict=False)
    return model


def lerp_pass(model, a_sd: dict, b_sd: dict, alpha: float) -> float:
    t = time.perf_counter()
    with torch.no_grad():
        for k, p in model.state_dict(keep_vars=True).items():
            if p.is_floating_point() and k in a_sd and k in b_sd:
                torch.lerp(a_sd[k], b_sd[k], alpha, out=p.data)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny shapes (a quick functional check)")
    ap.add_argument("--workdir", default=None, help="where A/B files are written (kept for reruns)")
    ap.add_argument("--cache-gb", type=float, default=8.0)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="alloy-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path_a, path_b = make_files(work, args.small)
    model = load_model(path_a, args.small)
    opener = CountingOpener()
    session = Session(ModuleHost(model, path_a), str(work / "data"),
                      Settings(cache_gb=args.cache_gb, compute_device="cpu"), opener=opener)
    rows = []
    t = time.perf_counter()
    session.merge_live(Recipe(model_a=path_a, model_b=path_b, alpha=0.3, dtype="fp32"))
    rows.append(("first live merge (disk → cache → model)", time.perf_counter() - t, opener.reads))
    reads = opener.reads
    t = time.perf_counter()
    session.merge_live(Recipe(model_a=path_a, model_b=path_b, alpha=0.6, dtype="fp32"))
    rows.append(("re-merge after alpha change (cached)", time.perf_counter() - t, opener.reads - reads))
    assert opener.reads == reads, "the re-merge read from disk"
    t = time.perf_counter()
    session.restore()
    rows.append(("restore original", time.perf_counter() - t, opener.reads - reads))
    session.cache.clear()                      # peak RAM: model + one copy of A and B
    from safetensors.torch import load_file
    a_sd, b_sd = load_file(path_a), load_file(path_b)
    rows.append(("one torch.lerp pass (A, B in RAM)", lerp_pass(model, a_sd, b_sd, 0.6), 0))
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"model: SD1.5 {'tiny' if args.small else 'full'} fp32, {nbytes / 2**30:.2f} GiB of parameters, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"{'step':44s} {'seconds':>8s} {'file reads':>11s}")
    for name, sec, n in rows:
        print(f"{name:44s} {sec:8.2f} {n:11d}")


if __name__ == "__main__":
    main()
