"""The recipe as JSON, and loading one from the current merge, history, a PNG or a checkpoint.

Loading fills the JSON box and every control at once."""
from __future__ import annotations

import gradio as gr

from ..errors import AlloyError
from ..recipe import Recipe
from . import blocks_logic as bl
from . import fields as fl
from . import recipe_sources as rs
from .blocks_editor import show_sliders
from .context import TabContext
from .method_view import VIEW_OUTPUTS, method_view
from .wiring import Ui

APPLY_INPUTS = ("arch", "blocks_target")
APPLY_OUTPUTS = ("recipe_json",) + fl.RECIPE_FIELDS + tuple(n for n in VIEW_OUTPUTS if n not in fl.RECIPE_FIELDS) \
    + bl.SLIDER_NAMES


# ---- handlers (name-keyed, tested directly) ---------------------------------------------------
def host_names(ctx: TabContext, recipe: Recipe) -> tuple[Recipe, list[str]]:
    """`recipe` with models A to F as the host lists them, each found by sha256 first, then by
    name (merger.locate); a sentence for each model that is not there (its name is kept)."""
    from ..locate import Finder
    from ..recipe import MODEL_SLOTS
    host = ctx.host
    finder = Finder(host.model_candidates(), direct=host.resolve_model, where=host.describe())
    changes, notes = {}, []
    for slot in "abcdef":
        value = getattr(recipe, MODEL_SLOTS[slot])
        if not value:
            continue
        try:
            cand, note = finder.find(slot, value, (recipe.hashes or {}).get(slot))
        except AlloyError as e:
            notes.append(str(e).rstrip("."))
            continue
        changes[MODEL_SLOTS[slot]] = cand.name
        if note:
            notes.append(note)
    return recipe.replace(**changes), notes


def apply_recipe(ctx: TabContext, recipe: Recipe, f: dict, source: str) -> dict:
    """Every control's new value for `recipe`, the JSON box, and a status naming the source.
    Models are shown as the host lists them (found by sha256, then name)."""
    recipe, missing = host_names(ctx, recipe)
    values = fl.fields_from_recipe(recipe, ctx.model_names())
    out = {"recipe_json": recipe.to_json(), **values}
    view = method_view(values["mode"], values["calc"])
    note = ""
    if view["calc"]["value"] != values["calc"]:
        note = f" Calculation '{values['calc']}' does not go with this mode; using '{view['calc']['value']}'."
    for name, update in view.items():  # keep the recipe's value, add the visibility
        if isinstance(update, dict) and name in values and "value" not in update:
            update = gr.update(**{k: v for k, v in update.items() if k != "__type__"}, value=values[name])
        out[name] = update
    try:
        out.update(show_sliders(ctx, {**f, **values}))
    except AlloyError:
        pass  # the block list belongs to another architecture; model A's detection redraws the sliders
    note += "".join(f" {m}." for m in missing)
    out["status"] = f"Loaded {recipe.display_name()} from {source}.{note}"
    return out


def on_to_json(ctx: TabContext, f: dict) -> dict:
    """Controls -> JSON box."""
    return {"recipe_json": fl.recipe_from_fields(f).to_json(), "status": "Recipe built from the controls."}


def on_apply_json(ctx: TabContext, f: dict) -> dict:
    return apply_recipe(ctx, Recipe.from_json(f.get("recipe_json") or ""), f, "the JSON box")


def on_load_current(ctx: TabContext, f: dict) -> dict:
    """The recipe of the merge now loaded (live) or, failing that, the newest history entry."""
    status = ctx.session.status() or {}
    recipe = status.get("recipe")
    source = "the current merge"
    if recipe is None:
        history = getattr(ctx.session, "history", None)
        recipe = history.last_recipe() if history is not None else None
        source = "the last merge in history"
    if recipe is None:
        raise AlloyError("Nothing has been merged yet.")
    if isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    elif isinstance(recipe, str):
        recipe = Recipe.from_json(recipe)
    return apply_recipe(ctx, recipe, f, source)


def on_load_history(ctx: TabContext, f: dict) -> dict:
    label = f.get("history_pick")
    if not label:
        raise AlloyError("Choose a history entry first.")
    for entry_label, recipe in rs.history_recipes(getattr(ctx.session, "history", None), limit=1000):
        if entry_label == label:
            return apply_recipe(ctx, recipe, f, "history")
    raise AlloyError(f"History entry '{label}' is gone; refresh the list.")


def on_history_refresh(ctx: TabContext, f: dict) -> dict:
    return {"history_pick": gr.update(choices=rs.history_choices(ctx.session), value=None)}


def on_load_png(ctx: TabContext, f: dict) -> dict:
    image = f.get("png_image")
    if image is None:
        return {}
    info = dict(getattr(image, "info", None) or {})
    recipe = rs.recipe_from_png_info(info, getattr(ctx.session, "history", None))
    return apply_recipe(ctx, recipe, f, "the image")


def on_load_checkpoint(ctx: TabContext, f: dict) -> dict:
    name = f.get("meta_model")
    if not name:
        raise AlloyError("Choose a checkpoint first.")
    recipe = rs.recipe_from_checkpoint(ctx.host.resolve_model(name))
    return apply_recipe(ctx, recipe, f, name)


# ---- layout ---------------------------------------------------------------------------------
def build_recipe_panel(ui: Ui, ctx: TabContext) -> None:
    ui.add("recipe_json", gr.Textbox(label="Recipe (JSON)", lines=8, max_lines=30,
                                     elem_id="alloy_recipe_json", show_copy_button=True))
    with gr.Row():
        ui.add("to_json", gr.Button("From controls", size="sm", elem_id="alloy_to_json"))
        ui.add("apply_json", gr.Button("Apply to controls", size="sm", elem_id="alloy_apply_json"))
        ui.add("load_current", gr.Button("Current merge", size="sm", elem_id="alloy_load_current"))
    with gr.Accordion("Load a recipe from history, an image or a checkpoint", open=False):
        with gr.Row():
            ui.add("history_pick", gr.Dropdown(rs.history_choices(ctx.session), value=None, label="History",
                                               elem_id="alloy_history_pick", scale=4))
            ui.add("history_refresh", gr.Button("↻", elem_classes=["alloy-tool"], scale=0, min_width=40,
                                                elem_id="alloy_history_refresh"))
            ui.add("history_load", gr.Button("Load", size="sm", scale=1, elem_id="alloy_history_load"))
        ui.add("png_image", gr.Image(label="PNG made with a merge (drop it here)", type="pil",
                                     elem_id="alloy_png_image", height=160))
        with gr.Row():
            ui.add("meta_model", gr.Dropdown(ctx.model_names(), value=None, label="Checkpoint",
                                             elem_id="alloy_meta_model", scale=4))
            ui.add("meta_load", gr.Button("Load", size="sm", scale=1, elem_id="alloy_meta_load"))


def wire_recipe_panel(ui: Ui, ctx: TabContext) -> None:
    ins = list(APPLY_INPUTS)
    outs = list(APPLY_OUTPUTS)
    ui.bind(ui["to_json"].click, lambda f: on_to_json(ctx, f), fl.RECIPE_FIELDS, ["recipe_json"])
    ui.bind(ui["apply_json"].click, lambda f: on_apply_json(ctx, f), ins + ["recipe_json"], outs)
    ui.bind(ui["load_current"].click, lambda f: on_load_current(ctx, f), ins, outs)
    ui.bind(ui["history_refresh"].click, lambda f: on_history_refresh(ctx, f), [], ["history_pick"])
    ui.bind(ui["history_load"].click, lambda f: on_load_history(ctx, f), ins + ["history_pick"], outs)
    ui.bind(ui["png_image"].upload, lambda f: on_load_png(ctx, f), ins + ["png_image"], outs)
    ui.bind(ui["meta_load"].click, lambda f: on_load_checkpoint(ctx, f), ins + ["meta_model"], outs)
