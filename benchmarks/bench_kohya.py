"""Alloy's LoRA tools side by side with kohya sd-scripts' own scripts, on generated kohya LoRAs.

kohya's scripts are GPL and are not part of Alloy: fetch sd-scripts yourself, install the packages
its LoRA scripts import into a venv of their own (torch, safetensors, transformers, diffusers,
accelerate, opencv-python-headless, toml, imagesize, einops, tqdm), and pass both paths:

    python benchmarks/bench_kohya.py --kohya ~/sd-scripts --kohya-python ~/kohya-venv/bin/python \\
        --sd1-base base.safetensors --sd1-tuned tuned.safetensors [--sdxl-base B --sdxl-tuned T] \\
        [--work /tmp/kohya-bench] [--kohya-sdxl-extract]

For each architecture given it writes LoRAs on the checkpoint's own modules (a "slider" pair: rank 4 /
alpha 1, UNet only; a "full" pair: rank 16 / alpha 8 with text encoders and 3×3 convs), runs the
same operation with both tools (each as its own process, timed) and prints one markdown table:
ΔW = (alpha/rank)·up·down of every module compared between the two files (overall = √Σ‖ΔWa−ΔWk‖² /
√Σ‖ΔWk‖², worst = the largest per-module ratio), each file's error against the exact result, ranks.
kohya's SDXL extract loads both models in fp32 (≈ 20 GB) and is only run with --kohya-sdxl-extract.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from anywhere

from merger.io import open_source                                # noqa: E402
from merger.lora.formats import load_lora                         # noqa: E402
from merger.lora.keymap import build_index                        # noqa: E402
from merger.lora.linalg import module_delta                       # noqa: E402
from merger.lora.synth import lora_for_checkpoint                 # noqa: E402

ROWS: list[tuple[str, str, str]] = []


def shapes_of(path: str) -> dict[str, tuple]:
    src = open_source(path, "checkpoint")
    try:
        return {k: tuple(src.info(k).shape) for k in src.keys()}
    finally:
        src.close()


def write_lora(path, shapes, arch, rank, alpha, seed, unet_only, conv, every=1, decay=None):
    """A kohya-layout LoRA (fp16, float alphas as kohya's trainer saves them) on every `every`-th
    module of the checkpoint (UNet only for `unet_only`); `decay`: up's columns scaled by decayⁱ
    (a decaying spectrum, so that dynamic resizes pick different ranks)."""
    names = sorted(build_index(shapes, arch))
    keep = set(names[::every])
    sd = lora_for_checkpoint(shapes, arch, rank, alpha, seed=seed, conv=conv, dtype=torch.float32,
                             only=lambda n: n in keep and (n.startswith("lora_unet_") or not unet_only))
    for k in list(sd):
        if decay and k.endswith("lora_up.weight"):
            r = sd[k].shape[1]
            sd[k] = sd[k] * (decay ** torch.arange(r, dtype=torch.float32)).reshape(1, r, *([1] * (sd[k].dim() - 2)))
        sd[k] = sd[k].half() if k.endswith("weight") else sd[k]
    save_file(sd, str(path), {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                              "ss_network_alpha": str(alpha)})
    return str(path)


def timed(cmd, cwd=None, env=None) -> float:
    t0 = time.time()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr[-3000:]}")
    return time.time() - t0


def kohya(a, script, *args) -> float:
    env = {**os.environ, "PYTHONPATH": str(a.kohya)}
    return timed([a.kohya_python, str(Path(a.kohya) / "networks" / script), *map(str, args)], cwd=a.kohya, env=env)


def alloy(*args) -> float:
    return timed([sys.executable, "-m", "merger", "lora", *map(str, args), "--overwrite"],
                 cwd=str(Path(__file__).resolve().parents[1]))


class Deltas:
    """ΔW (float64, 2-D) of a LoRA file's modules, or of Σ ratio·LoRA, computed per module on use
    (a whole SD file of float64 deltas would not fit in memory)."""

    def __init__(self, *pairs):
        self.files = [(load_lora(str(p)), r) for p, r in (pairs if isinstance(pairs[0], tuple) else [(pairs[0], 1.0)])]

    def names(self) -> list[str]:
        return sorted({n for f, _ in self.files for n in f.modules})

    def get(self, name) -> torch.Tensor | None:
        out = None
        for f, r in self.files:
            if name in f.modules:
                d = module_delta(f.modules[name], dtype=torch.float64)
                d = r * d.reshape(d.shape[0], -1)
                out = d if out is None else out + d
        return out


def deltas(path) -> Deltas:
    return Deltas(path)


def exact_sum(pairs) -> Deltas:
    return Deltas(*[(p, r) for p, r in pairs])


def compare(a: Deltas, b: Deltas) -> tuple[float, float]:
    """(overall, worst module) relative Frobenius difference of a against b, over b's modules."""
    num = den = worst = 0.0
    for n in b.names():
        db, da = b.get(n), a.get(n)
        diff = float((da - db).norm() ** 2) if da is not None else float(db.norm() ** 2)
        nb = float(db.norm() ** 2)
        num, den = num + diff, den + nb
        worst = max(worst, math.sqrt(diff / nb) if nb else 0.0)
    return math.sqrt(num / den) if den else 0.0, worst


def out(w: Path, tag: str, what: str) -> Path:
    """work/<tag as a file name>_<what>.safetensors"""
    return w / (re.sub(r"[^A-Za-z0-9.]+", "_", tag).strip("_") + f"_{what}.safetensors")


def pct(x: float) -> str:
    return f"{100 * x:.3g} %"


def ranks(path) -> dict[str, int]:
    return {n: m.rank for n, m in load_lora(path).modules.items()}


def raw(path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def svd_merge(a, w, tag, big, small):
    """svd_merge_lora.py vs lora merge --rank 8 (default flags, then Alloy without the clamp)."""
    exact = exact_sum([(big, 1.5), (small, -1.5)])
    tk = kohya(a, "svd_merge_lora.py", "--models", big, small, "--ratios", "1.5", "-1.5", "--new_rank", "8",
               "--save_to", out(w, tag, "k_svd"))
    ta = alloy("merge", "--lora", f"{big}:1.5", "--lora", f"{small}:-1.5", "--rank", "8", "--dtype", "fp32",
               "--out", out(w, tag, "a_svd"), "--device", "cpu")
    alloy("merge", "--lora", f"{big}:1.5", "--lora", f"{small}:-1.5", "--rank", "8", "--clamp-quantile", "1",
          "--dtype", "fp32", "--out", out(w, tag, "a_svd_noclamp"), "--device", "cpu")
    dk, da = deltas(out(w, tag, "k_svd")), deltas(out(w, tag, "a_svd"))
    dn = deltas(out(w, tag, "a_svd_noclamp"))
    o, worst = compare(da, dk)
    o2, worst2 = compare(dn, dk)
    ROWS.append((f"SVD merge ±1.5 → rank 8, {tag} (`svd_merge_lora.py` vs `lora merge --rank 8`)",
                 f"default flags: {pct(o)} overall, {pct(worst)} worst module apart (with `--clamp-quantile 1`: "
                 f"{pct(o2)} / {pct(worst2)}); error vs exact sum: kohya {compare(dk, exact)[0]:.4f}, Alloy "
                 f"{compare(da, exact)[0]:.4f}", f"kohya {tk:.1f} s, Alloy {ta:.1f} s"))


def concat(a, w, tag, big, small):
    """merge_lora.py --concat vs lora merge --concat (exact) and --concat --kohya-alpha."""
    exact = exact_sum([(big, 1.5), (small, -1.5)])
    kf, af, kaf = (out(w, tag, f"{s}") for s in ("k_concat", "a_concat", "a_concat_kohya"))
    tk = kohya(a, "merge_lora.py", "--concat", "--models", big, small, "--ratios", "1.5", "-1.5", "--save_to", kf)
    ta = alloy("merge", "--lora", f"{big}:1.5", "--lora", f"{small}:-1.5", "--concat", "--dtype", "fp32",
               "--out", af, "--device", "cpu")
    alloy("merge", "--lora", f"{big}:1.5", "--lora", f"{small}:-1.5", "--concat", "--kohya-alpha", "--dtype", "fp32",
          "--out", kaf, "--device", "cpu")
    rk, rka = raw(kf), raw(kaf)
    same = sum(torch.equal(rk[k].float(), rka[k].float()) for k in rk if k in rka)
    ROWS.append((f"concat ±1.5, {tag}, alpha 8 ≠ rank 16 (`merge_lora.py --concat` vs `lora merge --concat`)",
                 f"Alloy is the exact sum ({compare(deltas(af), exact)[0]:.1e}); kohya's file is "
                 f"{pct(compare(deltas(kf), exact)[0])} off it; `--kohya-alpha` reproduces kohya's file: "
                 f"{same}/{len(rk)} tensors bit-identical", f"kohya {tk:.1f} s, Alloy {ta:.1f} s"))


def resize(a, w, tag, src, method, param, cap):
    """resize_lora.py vs lora resize, dynamic rank: ranks chosen and ΔW."""
    kf, af = out(w, tag, f"k_rs_{method}"), out(w, tag, f"a_rs_{method}")
    tk = kohya(a, "resize_lora.py", "--model", src, "--new_rank", cap, "--dynamic_method", method,
               "--dynamic_param", param, "--save_to", kf)
    ta = alloy("resize", "--lora", src, "--dynamic", method, "--param", param, "--rank", cap, "--dtype", "fp32",
               "--out", af, "--device", "cpu")
    rk, ra, src_r = ranks(kf), ranks(af), ranks(src)
    same = sum(rk[n] == ra[n] for n in rk)
    capped = sum(rk[n] == src_r[n] + 1 and ra[n] == src_r[n] for n in rk)
    o, worst = compare(deltas(af), deltas(kf))
    ROWS.append((f"resize {method} {param}, max rank {cap}, {tag} LoRA",
                 f"ranks {min(ra.values())}–{max(ra.values())}, identical in {same}/{len(rk)} modules, {capped} "
                 "where kohya keeps input rank + 1 "
                 f"(Alloy caps at the input rank); ΔW {pct(o)} overall / {pct(worst)} worst apart",
                 f"kohya {tk:.1f} s, Alloy {ta:.1f} s"))


def bake(a, w, base, lora):
    """merge_lora.py --sd_model vs lora bake, fp16 output: differences in fp16 steps."""
    kf, af = w / "sd1_k_bake.safetensors", w / "sd1_a_bake.safetensors"
    tk = kohya(a, "merge_lora.py", "--sd_model", base, "--models", lora, "--ratios", "0.8", "--save_precision", "fp16",
               "--save_to", kf)
    ta = alloy("bake", "--model", base, "--lora", f"{lora}:0.8", "--dtype", "fp16", "--out", af, "--device", "cpu")
    worst_rel, beyond, n = 0.0, 0, 0
    with safe_open(str(kf), "pt") as fk, safe_open(str(af), "pt") as fa, safe_open(str(base), "pt") as fb:
        common = set(fk.keys()) & set(fa.keys())
        for k in sorted(common):
            b, x, y = fb.get_tensor(k), fk.get_tensor(k), fa.get_tensor(k)
            if not x.is_floating_point() or torch.equal(y, b):
                continue
            n += 1
            d = (x.float() - y.float()).abs()
            worst_rel = max(worst_rel, float(d.max() / (y.float().abs().max() + 1e-12)))
            x16, y16 = x.half(), y.half()
            same_sign = torch.signbit(x16) == torch.signbit(y16)
            steps = (x16.view(torch.int16).int() - y16.view(torch.int16).int()).abs()
            beyond += int(((steps > 1) & same_sign).sum() + ((~same_sign) & (d > 1.2e-7)).sum())
    ROWS.append(("bake the full LoRA ×0.8 into SD1.5, fp16 (`merge_lora.py --sd_model` vs `lora bake`)",
                 f"{n} changed tensors; max rel. difference {worst_rel:.1e}, {beyond} elements beyond 1 fp16 step",
                 f"kohya {tk:.1f} s, Alloy {ta:.1f} s"))


def exact_gap(d: Deltas, tuned, base, k: int, every: int) -> tuple[float, float, int]:
    """(overall error of `d` minus the exact rank-k error, worst module difference, modules) over
    every `every`-th module; the exact error from the singular values of the true ΔW = tuned − base,
    read through Alloy's key map."""
    from merger.arch import detect
    from merger.lora.keymap import build_index
    shp = shapes_of(base)
    index = build_index(shp, detect(list(shp), "base", shp).name)
    num_e = num_x = den = worst = 0.0
    names = d.names()[::every]
    t, b = open_source(str(tuned), "tuned"), open_source(str(base), "base")
    try:
        for n in names:
            tg = index[n]
            ref = t.read(tg.key).double() - b.read(tg.key).double()
            if tg.rows is not None:
                third = ref.shape[0] // 3
                ref = ref[tg.rows * third:(tg.rows + 1) * third]
            ref = ref.reshape(ref.shape[0], -1)
            s2 = torch.linalg.svdvals(ref.float()).double() ** 2
            tot, best = float(s2.sum()), float(s2[min(k, len(s2)):].sum())
            got = float((d.get(n) - ref).norm() ** 2)
            num_e, num_x, den = num_e + got, num_x + best, den + tot
            worst = max(worst, math.sqrt(got / tot) - math.sqrt(best / tot))
    finally:
        t.close()
        b.close()
    return math.sqrt(num_e / den) - math.sqrt(num_x / den), worst, len(names)


def extract(a, w, tag, base, tuned, run_kohya, every):
    af, nf = out(w, tag, "a_x"), out(w, tag, "a_x_noclamp")
    load = os.getloadavg()[0]
    ta = alloy("extract", "--tuned", tuned, "--base", base, "--rank", "8", "--out", af, "--device", "cpu")
    alloy("extract", "--tuned", tuned, "--base", base, "--rank", "8", "--clamp-quantile", "1", "--out", nf,
          "--device", "cpu")
    gap, worst, count = exact_gap(deltas(nf), tuned, base, 8, every)
    text = (f"randomized top-8 SVD error − exact SVD error: {gap:.1e} overall, {worst:.1e} worst module "
            f"({count} modules measured)")
    tk = None
    if run_kohya:
        kf = out(w, tag, "k_x")
        tk = kohya(a, "extract_lora_from_models.py", "--model_org", base, "--model_tuned", tuned, "--dim", "8",
                   "--save_to", kf, *(["--sdxl"] if tag == "SDXL" else []))
        o, wst = compare(deltas(af), deltas(kf))
        text += f"; ΔW {pct(o)} overall / {pct(wst)} worst module apart from kohya's"
    ROWS.append((f"extract rank 8 from two {tag} checkpoints, text encoders included (`extract_lora_from_models.py`"
                 " vs `lora extract`)", text, (f"kohya {tk:.0f} s, " if tk else "kohya not run, ")
                 + f"Alloy {ta:.0f} s (load {load:.1f} at start)"))


def run_arch(a, tag, arch, base, tuned, run_kohya_extract):
    w = Path(a.work)
    shapes = shapes_of(base)
    every = a.sd1_every if arch == "sd1" else a.sdxl_every
    big = write_lora(out(w, tag, "slider_big"), shapes, arch, 4, 1.0, 1, True, False, every)
    small = write_lora(out(w, tag, "slider_small"), shapes, arch, 4, 1.0, 2, True, False, every)
    fbig = write_lora(out(w, tag, "full_big"), shapes, arch, 16, 8.0, 3, False, True, every)
    fsmall = write_lora(out(w, tag, "full_small"), shapes, arch, 16, 8.0, 4, False, True, every)
    sub = "" if every == 1 else f", every {every}th module"
    steps = a.steps.split(",")
    if "merge" in steps:
        svd_merge(a, w, f"{tag} slider{sub}", big, small)
        svd_merge(a, w, f"{tag} full{sub}", fbig, fsmall)
    if "concat" in steps:
        concat(a, w, f"{tag} full{sub}", fbig, fsmall)
    if "resize" in steps:
        slider = f"{tag} slider{sub}"
        if not out(w, slider, "k_svd").exists():
            svd_merge(a, w, slider, big, small)
        resize(a, w, f"{slider} (kohya's rank-8 SVD merge)", out(w, slider, "k_svd"), "sv_fro", "0.99", "16")
        dec = write_lora(out(w, tag, "decaying"), shapes, arch, 16, 8.0, 5, True, False, every, decay=0.8)
        for method, param in (("sv_fro", "0.9"), ("sv_ratio", "4"), ("sv_cumulative", "0.7"))[:a.resizes]:
            resize(a, w, f"{tag} rank-16 decaying spectrum{sub}", dec, method, param, "16")
    if arch == "sd1" and "bake" in steps:
        bake(a, w, base, fbig)
    if tuned and "extract" in steps:
        extract(a, w, tag, base, tuned, run_kohya_extract, every)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kohya", required=True, help="an sd-scripts checkout (the folder holding networks/)")
    p.add_argument("--kohya-python", default=sys.executable, help="python with sd-scripts' requirements")
    p.add_argument("--sd1-base"), p.add_argument("--sd1-tuned")
    p.add_argument("--sdxl-base"), p.add_argument("--sdxl-tuned")
    p.add_argument("--kohya-sdxl-extract", action="store_true", help="also run kohya's SDXL extract (≈ 20 GB RAM)")
    p.add_argument("--sd1-every", type=int, default=1, help="SD1: as --sdxl-every (1 = every module)")
    p.add_argument("--sdxl-every", type=int, default=4,
                   help="SDXL: LoRAs on every Nth module, exact SVD errors of the extract on every Nth module")
    p.add_argument("--work", default="/tmp/alloy-kohya-bench")
    p.add_argument("--steps", default="merge,concat,resize,bake,extract", help="comma list of steps to run")
    p.add_argument("--resizes", type=int, default=3, help="how many dynamic methods to compare on the decaying LoRA")
    p.add_argument("--no-kohya-sd1-extract", action="store_true", help="run Alloy's SD1 extract only")
    a = p.parse_args(argv)
    if not (Path(a.kohya) / "networks" / "svd_merge_lora.py").is_file():
        p.error(f"{a.kohya} has no networks/svd_merge_lora.py")
    Path(a.work).mkdir(parents=True, exist_ok=True)
    start = f"{time.strftime('%Y-%m-%d %H:%M')} UTC, load {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores"
    if a.sd1_base:
        run_arch(a, "SD1.5", "sd1", a.sd1_base, a.sd1_tuned, not a.no_kohya_sd1_extract)
    if a.sdxl_base:
        run_arch(a, "SDXL", "sdxl", a.sdxl_base, a.sdxl_tuned, a.kohya_sdxl_extract)
    print(f"Measured {start} (load at the end {os.getloadavg()[0]:.1f}), torch {torch.__version__}, CPU\n")
    print("| operation | result | time |\n|---|---|---|")
    for op, res, t in ROWS:
        print(f"| {op} | {res} | {t} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
