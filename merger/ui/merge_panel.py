"""Models, mode/calc, ratios, options, the merge/restore/save buttons and the status line."""
from __future__ import annotations

import contextlib
import os

import gradio as gr

from ..errors import AlloyError
from . import fields as fl
from . import recipe_sources as rs
from .context import TabContext
from .method_view import VIEW_OUTPUTS, method_view  # noqa: F401 (method_view re-exported)
from .wiring import Ui

PICKERS = fl.MODEL_FIELDS + ("meta_model", "inspect_model", "cmp_a", "cmp_b")


# ---- handlers (name-keyed, tested directly) ---------------------------------------------------
def on_mode(ctx: TabContext, f: dict) -> dict:
    return method_view(f.get("mode"), f.get("calc"))


def on_refresh(ctx: TabContext, f: dict) -> dict:
    """Re-scan the host's checkpoints; every model picker gets the new list."""
    ctx.host.refresh_models()
    names = ctx.model_names()
    return {n: gr.update(choices=names) for n in PICKERS}


def _out_name(f: dict) -> str:
    name = (f.get("out_name") or "").strip()
    if not name:
        raise AlloyError("Enter a file name to save to.")
    return name


def _check_overwrite(ctx: TabContext, name: str, overwrite: bool) -> None:
    """Refuse to replace a file unless the Overwrite box is ticked (the message names the box)."""
    output_path = getattr(ctx.session, "output_path", None)
    if output_path is None or overwrite:
        return
    path = output_path(name)
    if os.path.exists(path):
        raise AlloyError(f"{path} exists; tick 'Overwrite an existing file' to replace it.")


def _job(ctx: TabContext, title: str):
    """The session's exclusive job (the WebUI's generation queue); nothing for sessions without one."""
    job = getattr(ctx.session, "job", None)
    return job(title) if job is not None else contextlib.nullcontext()


def _after_merge(ctx: TabContext, report) -> dict:
    recipe = getattr(report, "recipe", None)
    notes = [f"Random seed {recipe.dice['seed']}."] if recipe is not None and recipe.dice else []
    notes += [f"Warning: {w}." for w in getattr(report, "warnings", ())]
    out = {"status": " ".join([report.message()] + notes)}
    if recipe is not None:
        out["recipe_json"] = recipe.to_json()
    out["history_pick"] = gr.update(choices=rs.history_choices(ctx.session))
    return out


def on_merge(ctx: TabContext, f: dict, progress=None) -> dict:
    """Merge into the loaded model (WebUI)."""
    recipe = fl.recipe_from_fields(f)
    with _job(ctx, "Alloy merge"):
        return _after_merge(ctx, ctx.session.merge_live(recipe, progress=progress))


def on_merge_to_file(ctx: TabContext, f: dict, progress=None) -> dict:
    """Merge to `out_name` (in the models folder unless a path); refuses to overwrite unless asked."""
    recipe = fl.recipe_from_fields(f)
    _check_overwrite(ctx, _out_name(f), bool(f.get("overwrite")))
    with _job(ctx, "Alloy merge to file"):
        report = ctx.session.merge_to_file(recipe, _out_name(f), overwrite=bool(f.get("overwrite")),
                                           progress=progress)
    out = _after_merge(ctx, report)
    out.update(on_refresh(ctx, f))
    return out


def on_save(ctx: TabContext, f: dict) -> dict:
    """Save the live merged model as a file."""
    _check_overwrite(ctx, _out_name(f), bool(f.get("overwrite")))
    with _job(ctx, "Alloy save"):
        report = ctx.session.save_live(_out_name(f), dtype=f.get("dtype") or "fp16",
                                       prune=bool(f.get("prune")),
                                       bake_vae=(f.get("bake_vae") or "").strip() or None,
                                       overwrite=bool(f.get("overwrite")))
    out = {"status": report.message() if hasattr(report, "message") else str(report)}
    out.update(on_refresh(ctx, f))
    return out


def on_restore(ctx: TabContext, f: dict) -> dict:
    with _job(ctx, "Alloy restore"):
        return {"status": ctx.session.restore() or "Restored the original model."}


def on_draft(ctx: TabContext, f: dict) -> dict:
    """Controls changed: tell the session (the X/Y/Z axes start from this draft); silent on errors."""
    set_draft = getattr(ctx.session, "set_draft", None)
    if set_draft is None:
        return {}
    try:
        set_draft(fl.recipe_from_fields(f))
    except AlloyError:
        pass  # an unfinished setup (no model B yet …) is not worth a message while typing
    return {}


def on_stop(ctx: TabContext, f: dict) -> dict:
    ctx.session.interrupt()
    return {"status": "Stopping…"}


# ---- layout ---------------------------------------------------------------------------------
def build_models(ui: Ui, ctx: TabContext) -> None:
    names = ctx.model_names()
    # The standalone app starts with its first two models picked, so Merge to file works at once.
    first = dict(zip("ab", names)) if not ctx.live and len(names) >= 2 else {}
    with gr.Row(elem_id="alloy_models_row"):
        for slot in ("a", "b", "c"):
            _model_picker(ui, names, slot, first.get(slot))
        ui.add("refresh", gr.Button("↻", elem_id="alloy_refresh", elem_classes=["alloy-tool"],
                                    scale=0, min_width=40))
    with gr.Row(elem_id="alloy_models_more"):          # the multi-model modes' fine-tunes D–F
        for slot in ("d", "e", "f"):
            _model_picker(ui, names, slot, None)


def _model_picker(ui: Ui, names: list, slot: str, value) -> None:
    label = f"Model {slot.upper()}" if slot in "ab" else f"Model {slot.upper()} (optional)"
    ui.add(f"model_{slot}", gr.Dropdown(names, value=value, label=label, elem_id=f"alloy_model_{slot}",
                                       allow_custom_value=True, visible=slot in "ab", scale=4))


def build_method(ui: Ui, ctx: TabContext) -> None:
    view = method_view("weight_sum", "normal")
    ui.add("mode", gr.Radio(list(fl.MODE_CHOICES), value=fl.MODE_CHOICES[0], label="Merge mode",
                            elem_id="alloy_mode"))
    ui.add("calc", gr.Dropdown(view["calc"]["choices"], value="normal", label="Calculation",
                               elem_id="alloy_calc"))
    ui.add("method_info", gr.Markdown(view["method_info"], elem_id="alloy_method_info"))
    with gr.Row():
        ui.add("alpha", gr.Slider(-1.0, 2.0, value=0.5, step=0.01, label="alpha", elem_id="alloy_alpha"))
        ui.add("beta", gr.Slider(-1.0, 2.0, value=0.25, step=0.01, label="beta", elem_id="alloy_beta",
                                 visible=False))
        ui.add("gamma", gr.Slider(-1.0, 2.0, value=0.3, step=0.01, label="gamma", elem_id="alloy_gamma",
                                  visible=False))
    with gr.Row(elem_id="alloy_multi_params"):         # shown by the modes that use them
        ui.add("weights", gr.Textbox(label="Weights of B, C, … (comma list; empty = all 1)", placeholder="1,1",
                                     elem_id="alloy_weights", visible=False, scale=2))
        ui.add("density", gr.Slider(0.01, 1.0, value=fl.RECIPE_DEFAULTS["density"], step=0.01,
                                    label="density d (kept fraction)", elem_id="alloy_density", visible=False))
        ui.add("outliers", gr.Slider(0.0, 0.5, value=fl.RECIPE_DEFAULTS["outliers"], step=0.005,
                                     label="outliers γ (dropped top fraction)", elem_id="alloy_outliers",
                                     visible=False))


def build_rules(ui: Ui) -> None:
    with gr.Accordion("Elemental, include / exclude", open=False):
        ui.add("elemental", gr.Textbox(label="Elemental rules (one per line: blocks:elements:ratio)",
                                       lines=3, elem_id="alloy_elemental"))
        with gr.Row():
            ui.add("include", gr.Textbox(label="Include only (blocks, VAE, ADJUST or key parts)",
                                         elem_id="alloy_include"))
            ui.add("exclude", gr.Textbox(label="Exclude (keep A)", elem_id="alloy_exclude"))
    with gr.Accordion("Adjust (detail and colour)", open=False):
        with gr.Row(elem_id="alloy_adjust"):
            for name, label in zip(fl.ADJUST_FIELDS, fl.ADJUST_NAMES):
                ui.add(name, gr.Number(0.0, label=label, elem_id=f"alloy_{name}", min_width=60))
    with gr.Accordion("Options", open=False):
        with gr.Row():
            ui.add("compute_dtype", gr.Radio(list(fl.COMPUTE_DTYPES), value="fp32", label="Compute in",
                                             elem_id="alloy_compute_dtype"))
            ui.add("fix_clip_ids", gr.Checkbox(False, label="Reset CLIP position ids",
                                               elem_id="alloy_fix_clip_ids"))


def build_actions(ui: Ui, ctx: TabContext) -> None:
    with gr.Row(elem_id="alloy_actions"):
        ui.add("merge", gr.Button("Merge", variant="primary", elem_id="alloy_merge", visible=ctx.live))
        ui.add("merge_file", gr.Button("Merge to file", variant="primary" if not ctx.live else "secondary",
                                       elem_id="alloy_merge_file"))
        ui.add("restore", gr.Button("Restore original", elem_id="alloy_restore", visible=ctx.live))
        ui.add("stop", gr.Button("Stop", elem_id="alloy_stop"))
    ui.add("status", gr.Textbox(label="Status", interactive=False, lines=1, elem_id="alloy_status"))
    with gr.Group(elem_id="alloy_save_group"):
        with gr.Row():
            ui.add("out_name", gr.Textbox(label="File name (in the models folder)", placeholder="merged",
                                          value=None if ctx.live else "merged",
                                          elem_id="alloy_out_name", scale=3))
            ui.add("dtype", gr.Radio(list(fl.OUT_DTYPES), value="fp16", label="Precision",
                                     elem_id="alloy_dtype", scale=2))
        with gr.Row():
            ui.add("prune", gr.Checkbox(False, label="Prune (drop EMA etc.)", elem_id="alloy_prune"))
            ui.add("overwrite", gr.Checkbox(False, label="Overwrite an existing file",
                                            elem_id="alloy_overwrite"))
            ui.add("bake_vae", gr.Textbox(label="Bake VAE (path; empty = none)", elem_id="alloy_bake_vae",
                                          scale=2))
            ui.add("save", gr.Button("Save merged model", elem_id="alloy_save", visible=ctx.live))


def wire_merge_panel(ui: Ui, ctx: TabContext) -> None:
    from .fields import RECIPE_FIELDS
    recipe_in = list(RECIPE_FIELDS)
    ui.bind(ui["mode"].change, lambda f: on_mode(ctx, f), ["mode", "calc"], VIEW_OUTPUTS)
    ui.bind(ui["calc"].change, lambda f: on_mode(ctx, f), ["mode", "calc"], VIEW_OUTPUTS)
    pickers = list(PICKERS)
    ui.bind(ui["refresh"].click, lambda f: on_refresh(ctx, f), [], pickers)
    after = ["recipe_json", "history_pick"]
    ui.bind(ui["merge"].click, lambda f, p: on_merge(ctx, f, p), recipe_in, after, progress=True)
    ui.bind(ui["merge_file"].click, lambda f, p: on_merge_to_file(ctx, f, p),
            recipe_in + ["out_name", "overwrite"], after + pickers, progress=True)
    ui.bind(ui["restore"].click, lambda f: on_restore(ctx, f), [], [])
    ui.bind(ui["save"].click, lambda f: on_save(ctx, f),
            ["out_name", "dtype", "prune", "bake_vae", "overwrite"], pickers)
    ui.bind(ui["stop"].click, lambda f: on_stop(ctx, f), [], [], queue=False)
    for name in recipe_in:
        ui.bind(ui[name].change, lambda f: on_draft(ctx, f), recipe_in, [], queue=False,
                with_status=False)
