"""`python -m merger …`: merge, run, inspect, diff, presets, ui, lora."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from .errors import AlloyError
from .multimodes import DENSITY_DEFAULT, OUTLIERS_DEFAULT
from .paths import shown
from .recipe import CALCS, MODES, Recipe

EXIT_ERROR = 2


def _progress(quiet: bool, desc: str = "merging"):
    """A tqdm bar on stderr; phases (statistics pre-pass, merge) each get their own bar."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    state = {"bar": None, "total": None}

    def update(done, total, key):
        bar = state["bar"]
        if bar is None or total != state["total"] or done < bar.n:
            if bar is not None:
                bar.close()
            phase = "statistics" if str(key).startswith("statistics ") else desc
            state["bar"] = bar = tqdm(total=total, desc=phase, unit="key", file=sys.stderr, leave=False)
            state["total"] = total
        bar.update(done - bar.n)

    def close():
        if state["bar"] is not None:
            state["bar"].close()

    return update, close


def _add_merge_args(p):
    p.add_argument("--model-a", required=True, help="primary model (the base)")
    p.add_argument("--model-b", required=True)
    p.add_argument("--model-c")
    for slot in "def":
        p.add_argument(f"--model-{slot}", help="another fine-tune (multi-model modes)")
    p.add_argument("--mode", default="weight_sum", help=f"{'|'.join(MODES)} (UI names accepted)")
    p.add_argument("--calc", default="normal", help="|".join(CALCS))
    p.add_argument("--alpha", type=float, default=None,
                   help="alpha (default 0.5); the task-vector modes' lambda (default 1); SLERP's t (default 0.5)")
    p.add_argument("--beta", type=float, default=0.25)
    p.add_argument("--gamma", type=float, default=0.3)
    p.add_argument("--alpha-blocks", help='block weights "v0,v1,…" (26 SD1/SD2, 20 SDXL, 61 Flux) or a preset')
    p.add_argument("--beta-blocks", help="block weights for beta")
    p.add_argument("--weights", help='one weight per fine-tune B, C, … "w1,w2,…" (multi-model modes; default 1)')
    p.add_argument("--density", type=float, default=DENSITY_DEFAULT,
                   help=f"kept fraction d in (0, 1] (TIES, DARE, breadcrumbs; default {DENSITY_DEFAULT})")
    p.add_argument("--outliers", type=float, default=OUTLIERS_DEFAULT,
                   help=f"breadcrumbs: dropped top fraction in [0, 1) (default {OUTLIERS_DEFAULT})")
    p.add_argument("--elemental", default="", help='elemental rules "BLOCKS:ELEMENTS:RATIO, …"')
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--include", default="", help="merge only these blocks / VAE / ADJUST / key substrings")
    sel.add_argument("--exclude", default="", help="keep model A for these blocks / VAE / ADJUST / key substrings")
    p.add_argument("--adjust", default="", help='8 numbers "IN,OUT,OUT2,CONT,BRI,COL1,COL2,COL3"')
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32", "keep", "fp8_e4m3fn", "fp8_e5m2"],
                   help="output precision (fp8: the UNet in fp8, the rest in fp16)")
    p.add_argument("--compute-dtype", default="fp32", choices=["fp32", "fp64"])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--prune", action="store_true", help="drop EMA weights and schedule buffers")
    p.add_argument("--bake-vae", help="replace the VAE with this file's weights")
    p.add_argument("--fix-clip-ids", action="store_true", help="repair CLIP position_ids to 0..76")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the DARE masks, random block weights (R/U/X/D tokens) and random calcs; "
                        "-1 = a new one")
    p.add_argument("--dice-upper", help="X: upper limit (D: centre), one value or one per block (default 1)")
    p.add_argument("--dice-lower", help="X: lower limit (D: width), one value or per block; '0.2R0.5' = "
                                        "0.2 with probability 0.5, else 0 (default 0)")
    p.add_argument("--dice-max", help="clamp drawn values to at most this (default 1)")
    p.add_argument("--dice-min", help="clamp drawn values to at least this (default 0)")
    p.add_argument("--dice-round", type=int, help="decimals of drawn values (default 3)")


def _add_common_out(p):
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--presets", default=os.environ.get("ALLOY_PRESETS"), help="user presets file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_recipe_out(p):
    p.add_argument("--recipe-out", help="also write the recipe (models by file name and sha256) to this JSON file")
    p.add_argument("--recipe-paths", action="store_true",
                   help="name the models in --recipe-out by their full paths (for local use only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m merger", description="Alloy: merge Stable Diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("merge", help="merge checkpoints into a new file")
    _add_merge_args(p)
    _add_common_out(p)
    _add_recipe_out(p)

    p = sub.add_parser("run", help="re-run a recipe file")
    p.add_argument("recipe")
    p.add_argument("--models-dir", help="folder to find the recipe's models in, by sha256 then by name "
                                        "(default: the recipe file's folder, then the current folder)")
    _add_common_out(p)
    p.add_argument("--device", default="auto")
    _add_recipe_out(p)

    p = sub.add_parser("inspect", help="architecture, keys, dtypes, blocks, embedded recipe")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("diff", help="compare two models per block and component (cosine, relative distance)")
    p.add_argument("model_a")
    p.add_argument("model_b")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.add_argument("--plot", help="also draw the per-block chart into this .png file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plot file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("presets", help="list block-weight presets")
    p.add_argument("--arch", default="sd1", choices=["sd1", "sd2", "sdxl", "flux"])
    p.add_argument("--presets", default=os.environ.get("ALLOY_PRESETS"), help="user presets file")

    sub.add_parser("ui", help="serve the Alloy tab as a standalone app on 127.0.0.1 "
                              "(python -m merger ui --help)", add_help=False)

    try:
        from .lora.cli import add_lora_parser
    except ImportError:  # pragma: no cover - the LoRA tools are part of every release
        add_lora_parser = None
    if add_lora_parser is not None:
        add_lora_parser(sub)
    return parser


def _presets(path):
    from .presets import Presets
    return Presets(path)


def _dice_args(a) -> dict | None:
    limits = {k: getattr(a, f"dice_{k}") for k in ("upper", "lower", "max", "min", "round")}
    return {k: v for k, v in limits.items() if v is not None} or None


def _recipe_from_args(a) -> Recipe:
    return Recipe(model_a=a.model_a, model_b=a.model_b, model_c=a.model_c, model_d=a.model_d,
                  model_e=a.model_e, model_f=a.model_f, mode=a.mode, calc=a.calc,
                  alpha=a.alpha, beta=a.beta, gamma=a.gamma, alpha_blocks=a.alpha_blocks,
                  beta_blocks=a.beta_blocks, weights=a.weights, density=a.density, outliers=a.outliers,
                  elemental=a.elemental, include=a.include, exclude=a.exclude,
                  adjust=a.adjust, dtype=a.dtype, compute_dtype=a.compute_dtype, prune=a.prune,
                  bake_vae=a.bake_vae, fix_clip_ids=a.fix_clip_ids, seed=a.seed, dice=_dice_args(a))


def _run_merge(recipe: Recipe, a, verify: bool, names: dict | None = None) -> int:
    """Merge into --out; --recipe-out is written after the last tensor and before the output is
    renamed into place, so either both exist or (on any failure) neither."""
    from .filemerge import merge_to_file

    recipe_out = getattr(a, "recipe_out", None)
    if recipe_out:
        _check_recipe_out(recipe_out, a.overwrite)
    written = []

    def write_recipe(final: Recipe) -> None:
        from .atomic import atomic_write_text
        text = (final if a.recipe_paths else final.shared(names)).to_json() + "\n"
        written.append(atomic_write_text(recipe_out, text, overwrite=a.overwrite))

    update, close = _progress(a.quiet)
    try:
        report = merge_to_file(recipe, a.out, overwrite=a.overwrite, device=a.device, progress=update,
                               presets=_presets(a.presets), verify_hashes=verify, names=names,
                               before_commit=write_recipe if recipe_out else None)
    except BaseException:
        for path in written:          # the merge failed after the recipe was written: leave nothing
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    finally:
        close()
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    dice = report.recipe.dice if report.recipe is not None else None
    if dice and not a.quiet:
        drawn = [f"{w} {getattr(report.recipe, w + '_blocks')}" for w in ("alpha", "beta") if dice.get(w)]
        print(f"random seed {dice['seed']}: " + "; ".join(drawn), file=sys.stderr)
    if not a.quiet:
        print(report.message())
    return 0


def _check_recipe_out(path: str, overwrite: bool) -> None:
    """Refuse a --recipe-out that cannot be written before any work is done."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise AlloyError(f"The folder of --recipe-out does not exist: {shown(folder)}.")
    if os.path.lexists(path) and not overwrite:
        raise AlloyError(f"{shown(path)} exists; pass --overwrite to replace it.")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise AlloyError(f"--recipe-out {shown(path)} is not a plain file.")


def _locate_recipe_models(recipe: Recipe, recipe_path: str, models_dir: str | None, quiet: bool):
    """(recipe with paths, {slot: name to record}, notes): each model the recipe names is looked
    for by sha256, then by name, in --models-dir (default: the recipe file's folder, then the
    current folder); a path in the recipe that exists is tried first (the user owns the shell)."""
    from .locate import Finder, folder_candidates

    base = os.path.dirname(os.path.abspath(recipe_path))
    if models_dir:
        if not os.path.isdir(models_dir):
            raise AlloyError(f"--models-dir {shown(models_dir)} is not a folder.")
        dirs, cands = [models_dir], folder_candidates(models_dir)
    else:
        dirs = list(dict.fromkeys([base, os.getcwd()]))
        seen = {}
        for c in (c for d in dirs for c in folder_candidates(d, recursive=False)):
            seen.setdefault(os.path.realpath(c.path), c)
        cands = list(seen.values())

    def direct(name: str) -> str | None:
        for cand in (name, os.path.join(base, name)):
            if os.path.isfile(cand):
                return os.path.abspath(cand)
        return None
    note = None if quiet else (lambda text: print(f"note: {text}", file=sys.stderr))
    finder = Finder(cands, direct=direct, hash_unknown=True, note=note,
                    where=" or ".join(shown(d) for d in dirs))
    return finder.resolve(recipe)


def cmd_inspect(a) -> int:
    from .inspect import describe, format_description

    info = describe(a.file)
    print(json.dumps(info, indent=2) if a.json else format_description(info))
    return 0


def cmd_diff(a) -> int:
    from .compare import compare_files, format_text

    if a.plot:
        plot = os.path.abspath(a.plot)
        if not plot.lower().endswith(".png"):
            raise AlloyError(f"The plot file must end in .png: {plot}.")
        if os.path.exists(plot) and not a.overwrite:
            raise AlloyError(f"{plot} exists; pass --overwrite to replace it.")
    update, close = _progress(a.quiet, "comparing")
    try:
        cmp = compare_files(a.model_a, a.model_b, progress=update)
    finally:
        close()
    for note in cmp.notes():
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(cmp.to_dict(), indent=2) if a.json else format_text(cmp))
    if a.plot:
        from .atomic import atomic_write_bytes
        from .plots import comparison_png
        atomic_write_bytes(a.plot, comparison_png(cmp), overwrite=a.overwrite)
    return 0


def cmd_presets(a) -> int:
    from .arch import get_arch

    arch = get_arch(a.arch)
    presets = _presets(a.presets)
    for name in presets.names(arch):
        values = ",".join(f"{v:g}" for v in presets.get(name, arch))
        print(f"{name}\t{values}")
    return 0


def dispatch(a) -> int:
    if a.command == "merge":
        return _run_merge(_recipe_from_args(a), a, verify=False)
    if a.command == "run":
        recipe, names, notes = _locate_recipe_models(Recipe.load(a.recipe), a.recipe, a.models_dir, a.quiet)
        for n in notes:
            print(f"warning: {n}", file=sys.stderr)
        return _run_merge(recipe, a, verify=True, names=names)
    if a.command == "inspect":
        return cmd_inspect(a)
    if a.command == "presets":
        return cmd_presets(a)
    if a.command == "diff":
        return cmd_diff(a)
    if a.command == "lora":
        from .lora.cli import run as lora_run
        return lora_run(a)
    raise AlloyError(f"Unknown command {a.command}.")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ui"]:  # the standalone app parses its own options
        try:
            from .ui.standalone import main as ui_main
        except ImportError as e:
            print(f"error: the standalone app needs the UI packages ({e.name} is missing): "
                  "pip install -r requirements-ui.txt -c constraints-webui.txt, or run make demo.", file=sys.stderr)
            return EXIT_ERROR
        return ui_main(argv[1:]) or 0
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return dispatch(a)
    except AlloyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
