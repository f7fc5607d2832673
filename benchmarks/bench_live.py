"""Live-merge speed: an SD1.5 or SDXL model in memory (CPU or CUDA), merged in place.

Times, in one run: (1) the first live merge (sources read from disk into the cache), (2) a
re-merge after an alpha change (sources cached: asserts no file reads), (3) a sweep of N alphas
(an X/Y/Z axis: N re-merges), (4) restoring the original, against (5) the floor: one `torch.lerp`
pass over the model's float tensors with A and B already in memory on the same device.

    python benchmarks/bench_live.py --arch sd1 --workdir /tmp/alloy-bench       # full size SD1.5, fp32, CPU
    python benchmarks/bench_live.py --arch sdxl --dtype fp16 --device cuda      # full size SDXL on a GPU
    python benchmarks/bench_live.py --arch sdxl --small                         # tiny shapes: per-key overhead
    python benchmarks/bench_live.py --arch sd1 --file-dtype fp16 --cache-gb 4   # the WebUI's default cache

With a cache smaller than the two files (the WebUI's default 4 GB beside two SD1.5 fp16 files) the
re-merges read what the cache could not keep again; the "file reads" column counts them.

`--small` writes files with every key of the real layout but tiny shapes (each dimension ≤ 3), so
the times are the per-key cost of the machinery (2,515 keys for SDXL), not bytes. Full size needs
RAM (or VRAM with --device cuda) for the model plus cached A and B: SD1.5 fp32 ~11 GB, SDXL fp16 ~21 GB.
"""
from __future__ import annotations

import argparse
import os
import resource
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

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


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


def make_files(work: Path, arch: str, small: bool, dtype: str) -> tuple[str, str]:
    a, b = work / f"{arch}-{dtype}{'-tiny' if small else ''}-A.safetensors", \
        work / f"{arch}-{dtype}{'-tiny' if small else ''}-B.safetensors"
    if small:
        import tinysd
        entries = tinysd.layout(arch)
        for p, seed in ((a, 1), (b, 2)):
            if not p.exists():
                tinysd.write_checkpoint(p, seed, DTYPES[dtype], entries)
        return str(a), str(b)
    from merger import synth
    for p, seed in ((a, 1), (b, 2)):
        if not synth.matches(p, arch, seed=seed, dtype=dtype):
            synth.write(p, arch, seed=seed, dtype=dtype, overwrite=True)
    return str(a), str(b)


def load_model(path: str, arch: str, small: bool, dtype: str, device: str):
    import tinysd
    from safetensors.torch import load_file
    entries = tinysd.layout(arch, full=not small)
    with torch.device("meta"):
        model = tinysd.build_model(entries, DTYPES[dtype])
    model = model.to_empty(device=device)
    model.load_state_dict(load_file(path, device=device), strict=False)
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def lerp_pass(model, a_sd: dict, b_sd: dict, alpha: float, device: str) -> float:
    """One torch.lerp over every float tensor of the model, A and B in memory on its device."""
    params = [(p, a_sd[k], b_sd[k]) for k, p in model.state_dict(keep_vars=True).items()
              if p.is_floating_point() and k in a_sd and k in b_sd]
    sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        for p, x, y in params:
            torch.lerp(x, y, alpha, out=p.data)
    sync(device)
    return time.perf_counter() - t


def timed(device: str, fn) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=("sd1", "sdxl"), default="sd1")
    ap.add_argument("--small", action="store_true", help="tiny shapes: the per-key overhead")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (model, cache and merge on that device)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="the model's precision")
    ap.add_argument("--file-dtype", choices=tuple(DTYPES), default=None,
                    help="the files' precision (default: --dtype; fp16 files into an fp32 model = WebUI --no-half)")
    ap.add_argument("--sweep", type=int, default=20, help="alphas in the sweep (an X/Y/Z axis)")
    ap.add_argument("--workdir", default=None, help="where A/B files are written (kept for reruns)")
    ap.add_argument("--cache-gb", type=float, default=24.0)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available here; use --device cpu")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="alloy-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    file_dtype = args.file_dtype or args.dtype
    path_a, path_b = make_files(work, args.arch, args.small, file_dtype)
    model = load_model(path_a, args.arch, args.small, args.dtype, args.device)
    opener = CountingOpener()
    gpu = args.device.startswith("cuda")
    session = Session(ModuleHost(model, path_a), str(work / "data"),
                      Settings(cache_gb=args.cache_gb, compute_device=args.device, cache_on_gpu=gpu), opener=opener)

    def recipe(alpha):
        return Recipe(model_a=path_a, model_b=path_b, alpha=alpha, dtype=args.dtype)

    rows = [("first live merge (disk → cache → model)",
             timed(args.device, lambda: session.merge_live(recipe(0.3))), opener.reads)]
    reads = opener.reads
    rows.append(("re-merge after an alpha change (cached)",
                 timed(args.device, lambda: session.merge_live(recipe(0.6))), opener.reads - reads))
    alphas = [round(0.05 + 0.9 * i / max(1, args.sweep - 1), 4) for i in range(args.sweep)]
    sweep = timed(args.device, lambda: [session.merge_live(recipe(al)) for al in alphas])
    rows.append((f"sweep of {args.sweep} alphas, all (per merge {sweep / max(1, args.sweep) * 1000:.1f} ms)",
                 sweep, opener.reads - reads))
    src_bytes = sum(os.path.getsize(p) for p in (path_a, path_b))
    if args.cache_gb * 2**30 >= src_bytes * 1.05:
        assert opener.reads == reads, "a re-merge read from disk"
    rows.append(("restore original", timed(args.device, session.restore), opener.reads - reads))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20     # KiB → GiB, before the floor's copies
    session.cache.clear()                      # peak memory: model + one copy of A and B
    from safetensors.torch import load_file
    a_sd, b_sd = ({k: v.to(DTYPES[args.dtype]) if v.is_floating_point() else v
                   for k, v in load_file(p, device=args.device).items()} for p in (path_a, path_b))
    lerp_pass(model, a_sd, b_sd, 0.6, args.device)           # warm-up (allocator, kernels)
    rows.append(("floor: one torch.lerp pass (A, B in memory)", lerp_pass(model, a_sd, b_sd, 0.6, args.device), 0))
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    keys = sum(1 for _ in model.state_dict())
    where = torch.cuda.get_device_name() if gpu else f"{os.cpu_count()} CPUs"
    print(f"model: {args.arch} {'tiny' if args.small else 'full'} {args.dtype} from {file_dtype} files, {keys} keys, "
          f"{nbytes / 2**30:.3f} GiB of parameters, {args.device} ({where}), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"peak RSS of the merges (model + source cache + groups): {peak:.2f} GiB")
    print(f"{'step':58s} {'seconds':>9s} {'file reads':>11s}")
    for name, sec, n in rows:
        print(f"{name:58s} {sec:9.3f} {n:11d}")


if __name__ == "__main__":
    main()
