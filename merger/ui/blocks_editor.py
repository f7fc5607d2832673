"""The block-weight editor: alpha/beta lists as text, one slider panel, presets, X/Y/Z helper.

Sync without JavaScript: a slider's `release` (user only) rewrites the target text; the text's
`blur`/`submit` (user only) and programmatic fills (presets, recipes) set the sliders. Neither event
fires on programmatic changes, so the two never loop.
"""
from __future__ import annotations

import re

import gradio as gr

from ..errors import AlloyError
from . import blocks_logic as bl
from .context import TabContext
from .wiring import Ui

SLIDER_INPUTS = ("arch", "blocks_target", "alpha", "beta", "alpha_blocks", "beta_blocks")
CURVE_INPUTS = ("arch", "alpha", "alpha_blocks", "beta_blocks", "dice_upper", "dice_lower", "dice_max", "dice_min")


# ---- handlers (name-keyed, tested directly) ---------------------------------------------------
def show_sliders(ctx: TabContext, f: dict) -> dict:
    """Sliders for the current arch showing the target list (or the scalar ratio when empty).

    A list with random tokens leaves the sliders as they are (the curve shows the tokens' ranges)."""
    from ..dice import has_tokens
    target = f.get("blocks_target") or "alpha"
    arch = f.get("arch") or bl.DEFAULT_ARCH
    fallback = float(f.get(target) if f.get(target) is not None else 0.5)
    text = f.get(bl.text_field(target)) or ""
    if has_tokens(text):
        return {"status": f"The {target} list has random tokens: they are drawn at each merge "
                          "(the curve shows their ranges)."}
    values = bl.values_from_text(text, arch, ctx.presets)
    return bl.slider_updates(arch, values, fallback)


def on_curve(ctx: TabContext, f: dict) -> dict:
    """The alpha (and beta) block lists as a small curve over the blocks; unchanged while a list
    does not parse (the status line says why when the list is used)."""
    from ..plots import png_image, weights_png
    arch = bl.get_arch(f.get("arch") or bl.DEFAULT_ARCH)
    try:
        alpha, a_ranges = bl.curve_values(f, "alpha", arch, ctx.presets)
        beta, b_ranges = bl.curve_values(f, "beta", arch, ctx.presets)
    except AlloyError:
        return {}
    png = weights_png(arch.block_ids, alpha, beta, {"alpha": a_ranges, "beta": b_ranges})
    return {"weights_plot": png_image(png)}


def initial_curve(ctx: TabContext):
    """The curve's value at page load (a callable: drawn when a browser opens the tab, not at
    start-up): the default alpha on every block of the default architecture."""
    return lambda: on_curve(ctx, {"arch": bl.DEFAULT_ARCH, "alpha": 0.5}).get("weights_plot")


def on_arch(ctx: TabContext, f: dict) -> dict:
    """Architecture changed: relabel sliders, offer that architecture's presets."""
    arch = f.get("arch") or bl.DEFAULT_ARCH
    n = len(bl.block_ids(arch))
    out = {"preset": gr.update(choices=bl.preset_names(ctx.presets, arch), value=None),
           "blocks_info": f"**{arch.upper()}**: {n} blocks (first value = {bl.block_ids(arch)[0]})."}
    try:
        out.update(show_sliders(ctx, f))
    except AlloyError:
        out.update(bl.slider_updates(arch, None, float(f.get("alpha") or 0.5)))
        out["status"] = (f"The {f.get('blocks_target') or 'alpha'} block list does not fit {arch.upper()} "
                         f"({n} values); the sliders show the plain ratio.")
    return out


def on_model_a(ctx: TabContext, f: dict) -> dict:
    """Model A chosen: detect its architecture from the header."""
    name = f.get("model_a")
    if not name:
        return {}
    arch = bl.detect_model_arch(ctx.host, name)
    return {"arch": arch}


def on_slider_release(ctx: TabContext, f: dict) -> dict:
    """Sliders -> the target's comma text (only the architecture's visible sliders)."""
    target = f.get("blocks_target") or "alpha"
    n = len(bl.block_ids(f.get("arch") or bl.DEFAULT_ARCH))
    return {bl.text_field(target): bl.format_blocks(bl.slider_values(f, n))}


def on_text(ctx: TabContext, f: dict, which: str) -> dict:
    """Text edited -> sliders, when that text is the one the sliders show."""
    if (f.get("blocks_target") or "alpha") != which:
        return {}
    return show_sliders(ctx, f)


def on_preset(ctx: TabContext, f: dict) -> dict:
    """A preset chosen: its values go into the target text and the sliders."""
    name = f.get("preset")
    if not name:
        return {}
    arch = f.get("arch") or bl.DEFAULT_ARCH
    target = f.get("blocks_target") or "alpha"
    values = bl.preset_values(ctx.presets, name, arch)
    out = bl.slider_updates(arch, values)
    out[bl.text_field(target)] = bl.format_blocks(values)
    return out


def on_axis_append(ctx: TabContext, f: dict) -> dict:
    """Append the target list, quoted, to the X/Y/Z values box."""
    target = f.get("blocks_target") or "alpha"
    arch = f.get("arch") or bl.DEFAULT_ARCH
    from ..dice import has_tokens
    text = f.get(bl.text_field(target)) or ""
    values = None if has_tokens(text) else bl.values_from_text(text, arch, ctx.presets)
    if has_tokens(text):
        value = '"' + ",".join(t for t in re.split(r"[,\s]+", text) if t) + '"'
    else:
        values = values if values is not None else bl.slider_values(f, len(bl.block_ids(arch)))
        value = bl.quoted_axis_value(values)
    return {"axis_values": bl.append_axis_value(f.get("axis_values"), value),
            "status": f"Added the {target} list to the X/Y/Z values; copy them into the plot's value box."}


# ---- layout ---------------------------------------------------------------------------------
def build_blocks_editor(ui: Ui, ctx: TabContext) -> None:
    """Components of the editor (inside the caller's layout context)."""
    ids = bl.block_ids(bl.DEFAULT_ARCH)
    with gr.Row():
        ui.add("arch", gr.Dropdown(list(bl.ARCH_CHOICES), value=bl.DEFAULT_ARCH, label="Blocks of",
                                   elem_id="alloy_arch", scale=1))
        ui.add("blocks_target", gr.Radio(list(bl.TARGETS), value="alpha", label="Sliders edit",
                                         elem_id="alloy_blocks_target", scale=1))
        ui.add("preset", gr.Dropdown(bl.preset_names(ctx.presets, bl.DEFAULT_ARCH), value=None,
                                     label="Preset", elem_id="alloy_preset", scale=2))
    ui.add("blocks_info", gr.Markdown(f"**SD1**: {len(ids)} blocks (first value = BASE).",
                                      elem_id="alloy_blocks_info"))
    ui.add("alpha_blocks", gr.Textbox(label="alpha blocks (comma list or preset name; empty = off)",
                                      lines=1, elem_id="alloy_alpha_blocks"))
    ui.add("beta_blocks", gr.Textbox(label="beta blocks (comma list or preset name; empty = off)",
                                     lines=1, elem_id="alloy_beta_blocks"))
    ui.add("weights_plot", gr.Image(initial_curve(ctx), label="Block weights", type="pil", interactive=False,
                                    height=200, elem_id="alloy_weights_plot", show_label=False))
    with gr.Column(elem_id="alloy_sliders", elem_classes=["alloy-sliders"]):
        for i, name in enumerate(bl.SLIDER_NAMES):
            ui.add(name, gr.Slider(bl.SLIDER_MIN, bl.SLIDER_MAX, step=bl.SLIDER_STEP, value=0.5,
                                   label=ids[i] if i < len(ids) else f"#{i}", visible=i < len(ids),
                                   elem_id=f"alloy_{name}", elem_classes=["alloy-slider"]))
    with gr.Row():
        ui.add("axis_append", gr.Button("Add list to X/Y/Z values", elem_id="alloy_axis_append",
                                        size="sm"))
        ui.add("axis_values", gr.Textbox(label="X/Y/Z values (paste into the plot)", lines=1,
                                         elem_id="alloy_axis_values", show_copy_button=True, scale=3))


def wire_blocks_editor(ui: Ui, ctx: TabContext) -> None:
    sliders = list(bl.SLIDER_NAMES)
    view_out = sliders + ["preset", "blocks_info"]
    ui.bind(ui["arch"].change, lambda f: on_arch(ctx, f), SLIDER_INPUTS, view_out)
    ui.bind(ui["blocks_target"].change, lambda f: show_sliders(ctx, f), SLIDER_INPUTS, sliders)
    ui.bind(ui["model_a"].change, lambda f: on_model_a(ctx, f), ["model_a"], ["arch"])
    release_in = ["arch", "blocks_target"] + sliders
    for name in sliders:
        ui.bind(ui[name].release, lambda f: on_slider_release(ctx, f), release_in,
                ["alpha_blocks", "beta_blocks"])
    for which in bl.TARGETS:
        box = ui[f"{which}_blocks"]
        for event in (box.blur, box.submit):
            ui.bind(event, lambda f, w=which: on_text(ctx, f, w), SLIDER_INPUTS, sliders)
    ui.bind(ui["preset"].change, lambda f: on_preset(ctx, f),
            ["preset", "arch", "blocks_target"], sliders + ["alpha_blocks", "beta_blocks"])
    curve_in = list(CURVE_INPUTS)
    for name in ("alpha_blocks", "beta_blocks", "arch", "dice_upper", "dice_lower", "dice_max", "dice_min"):
        if name in ui:
            ui.bind(ui[name].change, lambda f: on_curve(ctx, f), curve_in, ["weights_plot"], with_status=False)
    ui.bind(ui["alpha"].release, lambda f: on_curve(ctx, f), curve_in, ["weights_plot"], with_status=False)
    ui.bind(ui["axis_append"].click, lambda f: on_axis_append(ctx, f),
            ["blocks_target", "arch", "alpha_blocks", "beta_blocks", "axis_values"] + sliders,
            ["axis_values"])
