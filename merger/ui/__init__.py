"""The Alloy tab: one Gradio layout shared by the WebUI (live merges) and the standalone app (files).

    build_tab(session, live=True) -> gr.Blocks

Uses only what works in gradio 3.41.2 and under Forge's gradio-4 shim (gr.update, `_js=`, no
`.style()`, no gr.Box). No JavaScript: sliders and texts are kept in sync by Python events.
"""
from __future__ import annotations

import logging

import gradio as gr

from .context import TabContext
from .wiring import Ui

log = logging.getLogger("alloy.ui")


def build(session, *, live: bool = True, css: str | None = None, title: str = "Alloy"):
    """Build the tab; returns (blocks, ui) where `ui[name]` is each named component."""
    from . import blocks_editor, compare_panel, dice_panel, inspect_panel, merge_panel, recipe_panel

    ctx = TabContext(session=session, live=live)
    ui = Ui()
    with gr.Blocks(analytics_enabled=False, css=css, title=title) as blocks:
        if not live:
            gr.Markdown(f"## Alloy · models in `{session.host.models_dir()}`", elem_id="alloy_title")
        with gr.Row(elem_id="alloy_main", equal_height=False):
            with gr.Column(scale=3, elem_id="alloy_left"):
                merge_panel.build_models(ui, ctx)
                merge_panel.build_method(ui, ctx)
                merge_panel.build_actions(ui, ctx)
                with gr.Accordion("Block weights", open=False, elem_id="alloy_blocks"):
                    blocks_editor.build_blocks_editor(ui, ctx)
                with gr.Accordion("Random weights (dice)", open=False, elem_id="alloy_dice"):
                    dice_panel.build_dice_panel(ui)
                merge_panel.build_rules(ui)
            with gr.Column(scale=2, elem_id="alloy_right"):
                recipe_panel.build_recipe_panel(ui, ctx)
                with gr.Accordion("Inspect a model", open=not live, elem_id="alloy_inspect_acc"):
                    inspect_panel.build_inspect_panel(ui, ctx)
                _maybe_lora(session)
        with gr.Accordion("Compare two models", open=False, elem_id="alloy_compare"):
            compare_panel.build_compare_panel(ui, ctx)
        merge_panel.wire_merge_panel(ui, ctx)
        blocks_editor.wire_blocks_editor(ui, ctx)
        recipe_panel.wire_recipe_panel(ui, ctx)
        inspect_panel.wire_inspect_panel(ui, ctx)
        dice_panel.wire_dice_panel(ui, ctx)
        compare_panel.wire_compare_panel(ui, ctx)
    blocks.alloy_ui = ui
    return blocks, ui


def build_tab(session, live: bool = True, css: str | None = None) -> gr.Blocks:
    """The tab as a gr.Blocks; `live=False` (standalone) hides Merge/Restore/Save and shows files only."""
    return build(session, live=live, css=css)[0]


def _maybe_lora(session) -> None:
    """The LoRA tools, inside an accordion, when merger.ui.lora_panel is present."""
    try:
        from .lora_panel import build_lora_panel
    except ImportError:
        return
    with gr.Accordion("LoRA", open=False, elem_id="alloy_lora"):
        try:
            build_lora_panel(session)
        except Exception:  # a broken LoRA panel must not take the merge tab down
            log.exception("Alloy: the LoRA panel failed to build")
            gr.Markdown("The LoRA tools failed to load; see the console.")
