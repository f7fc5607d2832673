"""Compare two models: per-block chart (relative distance bars, cosine line) with the table beside it."""
from __future__ import annotations

import gradio as gr

from ..errors import AlloyError
from .context import TabContext
from .wiring import Ui

PICKERS = ("cmp_a", "cmp_b")


def on_compare(ctx: TabContext, f: dict, progress=None) -> dict:
    """Stream both files once and show the chart and the table (AlloyError for bad choices)."""
    from ..compare import compare_files, markdown_table
    from ..plots import comparison_png, png_image
    a, b = f.get("cmp_a"), f.get("cmp_b")
    if not a or not b:
        raise AlloyError("Choose the two models to compare.")
    cmp = compare_files(ctx.host.resolve_model(a), ctx.host.resolve_model(b), progress=progress)
    notes = "".join(f"\n\nNote: {n}." for n in cmp.notes())
    return {"cmp_plot": png_image(comparison_png(cmp)),
            "cmp_table": markdown_table(cmp) + notes,
            "status": f"Compared {a} with {b}: {cmp.arch.label}, "
                      f"{sum(s.keys for s in cmp.components.values())} keys in {cmp.seconds:.1f} s."}


def on_use_ab(ctx: TabContext, f: dict) -> dict:
    """Fill the pickers with the merge's model A and B."""
    return {"cmp_a": f.get("model_a"), "cmp_b": f.get("model_b")}


def build_compare_panel(ui: Ui, ctx: TabContext) -> None:
    names = ctx.model_names()
    gr.Markdown("Cosine similarity and relative distance ‖B − A‖ / ‖A‖ per block and per component "
                "(compare a merge with its inputs to see what the block weights did).")
    with gr.Row():
        ui.add("cmp_a", gr.Dropdown(names, value=None, label="A (reference)", elem_id="alloy_cmp_a",
                                    allow_custom_value=True, scale=3))
        ui.add("cmp_b", gr.Dropdown(names, value=None, label="B", elem_id="alloy_cmp_b",
                                    allow_custom_value=True, scale=3))
        ui.add("cmp_use_ab", gr.Button("Models A, B", size="sm", elem_id="alloy_cmp_use_ab", scale=1))
        ui.add("cmp_run", gr.Button("Compare", variant="primary", size="sm", elem_id="alloy_cmp_run", scale=1))
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            ui.add("cmp_plot", gr.Image(label="Per block", show_label=False, type="pil", interactive=False,
                                        elem_id="alloy_cmp_plot"))
        with gr.Column(scale=2):
            ui.add("cmp_table", gr.Markdown("", elem_id="alloy_cmp_table"))


def wire_compare_panel(ui: Ui, ctx: TabContext) -> None:
    ui.bind(ui["cmp_run"].click, lambda f, p: on_compare(ctx, f, p), list(PICKERS),
            ["cmp_plot", "cmp_table"], progress=True)
    ui.bind(ui["cmp_use_ab"].click, lambda f: on_use_ab(ctx, f), ["model_a", "model_b"], list(PICKERS))
