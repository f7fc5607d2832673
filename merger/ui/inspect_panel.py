"""Inspect a model: architecture, key count, dtypes, keys per block, embedded recipe."""
from __future__ import annotations

import gradio as gr

from ..errors import AlloyError
from .context import TabContext
from .wiring import Ui


def on_inspect(ctx: TabContext, f: dict) -> dict:
    """The header summary of the chosen model (no tensor is read)."""
    from ..inspect import describe, format_description
    name = f.get("inspect_model")
    if not name:
        raise AlloyError("Choose a model to inspect.")
    info = describe(ctx.host.resolve_model(name))
    return {"inspect_out": format_description(info),
            "status": f"{name}: {info.get('architecture') or 'unknown architecture'}, {info['keys']} keys."}


def build_inspect_panel(ui: Ui, ctx: TabContext) -> None:
    with gr.Row():
        ui.add("inspect_model", gr.Dropdown(ctx.model_names(), value=None, label="Model",
                                            elem_id="alloy_inspect_model", scale=4))
        ui.add("inspect", gr.Button("Inspect", size="sm", scale=1, elem_id="alloy_inspect"))
    ui.add("inspect_out", gr.Textbox(label="Header", lines=10, max_lines=40, interactive=False,
                                     elem_id="alloy_inspect_out"))


def wire_inspect_panel(ui: Ui, ctx: TabContext) -> None:
    ui.bind(ui["inspect"].click, lambda f: on_inspect(ctx, f), ["inspect_model"], ["inspect_out"])
