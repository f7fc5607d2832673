"""Random block weights (SuperMerger's dice): seed, limits, and "Roll n"."""
from __future__ import annotations

import gradio as gr

from .. import dice
from ..errors import AlloyError
from . import blocks_logic as bl
from . import fields as fl
from .context import TabContext
from .wiring import Ui

MAX_ROLLS = 100
HELP = ("Put **R** (0…1), **U** (1.5 − 2r), **X** (between the X limits) or **D** (centre ± width/2) in the "
        "alpha or beta block list: one token for every block, or mixed with numbers (`U,0,0,…,R,R`). "
        "Drawn values are clamped to min…max and rounded. The seed −1 draws new numbers at every merge; "
        "the recipe keeps the numbers drawn, the seed and the tokens.")


def roll_seeds(seed: int, n: int) -> list[int]:
    """n seeds: new random ones for −1, else seed, seed + 1, …"""
    seed = dice.check_seed(seed)
    if not 1 <= n <= MAX_ROLLS:
        raise AlloyError(f"Roll between 1 and {MAX_ROLLS} merges, not {n}.")
    if seed == -1:
        return [dice.new_seed() for _ in range(n)]
    if seed + n - 1 > dice.SEED_LIMIT:
        raise AlloyError(f"Seeds {seed}…{seed + n - 1} pass the largest seed {dice.SEED_LIMIT}.")
    return list(range(seed, seed + n))


def rolled_lines(rolled) -> str:
    """A Markdown list: seed → the drawn alpha (beta) list of each rolled recipe."""
    lines = []
    for r in rolled:
        parts = [f"{w} `{getattr(r, w + '_blocks')}`" for w in ("alpha", "beta") if r.dice.get(w)]
        lines.append(f"- seed **{r.seed}**: " + "; ".join(parts))
    return "\n".join(lines)


def on_roll(ctx: TabContext, f: dict, progress=None) -> dict:
    """Draw n random lists. Standalone: n file merges `<name>-<seed>`. WebUI: the seeds go to the
    X/Y/Z values box for the `[Alloy] Random seed` axis (one merge per cell)."""
    from .. import xyz
    from ..arch import get_arch
    recipe = fl.recipe_from_fields(f)
    if not dice.wanted(recipe):
        raise AlloyError("Put R, U, X or D in the alpha or beta block list first (R alone = every block).")
    n = int(float(f.get("roll_n") or 0))
    seeds = roll_seeds(recipe.seed, n)
    arch = get_arch(f.get("arch") or bl.DEFAULT_ARCH)
    rolled = [dice.roll(recipe.replace(seed=s), arch) for s in seeds]
    out = {"roll_out": rolled_lines(rolled), "axis_values": ",".join(str(s) for s in seeds)}
    if ctx.live:
        out["status"] = (f"Drew {n} random lists. In txt2img choose the X/Y/Z plot script, axis "
                         f"'[Alloy] Random seed' with the values in the X/Y/Z box: one merge per cell, "
                         f"the labels show the drawn lists.")
        return out
    name = (f.get("out_name") or "").strip()
    if not name:
        raise AlloyError("Enter a file name; the merges are saved as <name>-<seed>.safetensors.")
    written = []
    for i, s in enumerate(seeds):
        def step(done, total, key, _i=i):
            if progress is not None:
                progress(_i * total + done, n * total, f"merge {_i + 1}/{n}")
        report = ctx.session.merge_to_file(xyz.cell_recipe(recipe, {"seed": s}), f"{name}-{s}",
                                           overwrite=bool(f.get("overwrite")), progress=step)
        written.append(report.path)
    out["status"] = f"Wrote {n} random merges: " + ", ".join(written)
    return out


def build_dice_panel(ui: Ui) -> None:
    gr.Markdown(HELP)
    with gr.Row():
        ui.add("seed", gr.Number(0, precision=0, label="Seed (−1 = new)", elem_id="alloy_seed", min_width=80))
        ui.add("dice_round", gr.Number(3, precision=0, label="Round (decimals)", elem_id="alloy_dice_round",
                                       min_width=80))
        ui.add("dice_min", gr.Textbox("0", label="min (clamp)", elem_id="alloy_dice_min", min_width=80))
        ui.add("dice_max", gr.Textbox("1", label="max (clamp)", elem_id="alloy_dice_max", min_width=80))
    with gr.Row():
        ui.add("dice_upper", gr.Textbox("1", label="X upper limit / D centre (one value or one per block)",
                                        elem_id="alloy_dice_upper"))
        ui.add("dice_lower", gr.Textbox("0", label="X lower limit / D width ('0.2R0.5': 0.2 with p = 0.5, "
                                        "else 0)", elem_id="alloy_dice_lower"))
    with gr.Row():
        ui.add("roll_n", gr.Number(4, precision=0, label="n", elem_id="alloy_roll_n", min_width=60, scale=1))
        ui.add("roll", gr.Button("Roll n", elem_id="alloy_roll", scale=1))
    ui.add("roll_out", gr.Markdown("", elem_id="alloy_roll_out"))


def wire_dice_panel(ui: Ui, ctx: TabContext) -> None:
    ins = list(fl.RECIPE_FIELDS) + ["arch", "roll_n", "out_name", "overwrite"]
    ui.bind(ui["roll"].click, lambda f, p: on_roll(ctx, f, p), ins, ["roll_out", "axis_values"], progress=True)
