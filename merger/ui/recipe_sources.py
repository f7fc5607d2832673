"""Where a recipe can be loaded from (Gradio-free): PNG text, checkpoint metadata, history entries."""
from __future__ import annotations

import json
import os
import re

from ..errors import AlloyError
from ..recipe import RECIPE_TYPE, Recipe

INFOTEXT_KEY = "Alloy recipe"          # the fields merger/webui.py adds to the generation infotext
INFOTEXT_HASH = "Alloy hash"
_HASH = re.compile(r"^[0-9a-f]{10}$")


def _decode_json_at(text: str, start: int):
    """The JSON value beginning at text[start] (object or string), or None."""
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value


def _as_recipe(value) -> Recipe | None:
    """A recipe from a dict, or from a string holding recipe JSON; None when it is not one."""
    if isinstance(value, str):
        s = value.strip()
        if not s.startswith("{"):
            return None
        value = _decode_json_at(s, 0)
    if isinstance(value, dict) and value.get("model_a") and value.get("type", RECIPE_TYPE) == RECIPE_TYPE:
        return Recipe.from_dict(value)
    return None


def _infotext_value(parameters: str, key: str = INFOTEXT_KEY):
    """The value of the `<key>:` field in an infotext (a JSON string/object or a bare word)."""
    m = re.search(r"(?:^|[,\n]\s*)" + re.escape(key) + r":\s*", parameters)
    if not m:
        return None
    start = m.end()
    if start < len(parameters) and parameters[start] in '"{':
        return _decode_json_at(parameters, start)
    return re.split(r"[,\n]", parameters[start:], maxsplit=1)[0].strip()


def _from_history(history, short_hash: str) -> Recipe | None:
    for entry in history.entries() if history is not None else ():
        try:
            r = Recipe.from_dict(entry["recipe"]) if entry.get("recipe") else None
        except AlloyError:          # an entry a newer or older version wrote, or an edited line
            continue
        if r is not None and r.short_hash() == short_hash:
            return r
    return None


def recipe_from_png_info(info: dict, history=None) -> Recipe:
    """The recipe a PNG carries in its text chunks.

    Looked for, in order: an `Alloy recipe` chunk; the `Alloy recipe:` field of the `parameters`
    infotext (JSON, or a recipe hash found in `history`); a whole recipe JSON object anywhere in
    `parameters`."""
    info = info or {}
    candidates = [info.get(INFOTEXT_KEY), info.get("alloy_recipe")]
    params = info.get("parameters")
    if isinstance(params, bytes):
        params = params.decode("utf-8", "replace")
    if isinstance(params, str):
        candidates += [_infotext_value(params), _infotext_value(params, INFOTEXT_HASH)]
    for value in candidates:
        if value is None:
            continue
        recipe = _as_recipe(value)
        if recipe is not None:
            return recipe
        if isinstance(value, str) and _HASH.match(value.strip()):
            recipe = _from_history(history, value.strip())
            if recipe is not None:
                return recipe
            raise AlloyError(f"The image names recipe {value.strip()}, which is not in the merge history.")
    if isinstance(params, str):
        for i in (m.start() for m in re.finditer(r"\{", params)):
            recipe = _as_recipe(_decode_json_at(params, i))
            if recipe is not None:
                return recipe
    raise AlloyError("The image holds no Alloy recipe (no 'Alloy recipe' field in its PNG text).")


def _a1111_recipe(metadata: dict, label: str) -> Recipe | None:
    """Best-effort recipe from the built-in merger's `sd_merge_recipe` + `sd_merge_models` fields
    (checked like any recipe: a malformed value is a sentence naming the checkpoint)."""
    try:
        md = json.loads(metadata.get("sd_merge_recipe") or "null")
        models = json.loads(metadata.get("sd_merge_models") or "{}")
    except (TypeError, ValueError, RecursionError):
        return None
    if not isinstance(md, dict) or not isinstance(models, dict):
        return None

    def name(key):
        h = md.get(key)
        entry = models.get(h) if isinstance(h, str) else None
        return entry.get("name") if isinstance(entry, dict) else None

    a, b, c = name("primary_model_hash"), name("secondary_model_hash"), name("tertiary_model_hash")
    if not (a and b):
        return None
    interp = str(md.get("interp_method") or "Weighted sum")
    mode = "add_difference" if interp.lower().startswith("add") else "weight_sum"
    d = {"model_a": a, "model_b": b, "model_c": c if mode != "weight_sum" else None, "mode": mode,
         "calc": md.get("calc") or "normal", "alpha": md.get("multiplier", 0.5), "beta": md.get("beta") or 0.25,
         "alpha_blocks": md.get("alpha_blocks"), "beta_blocks": md.get("beta_blocks"),
         "dtype": "fp16" if md.get("save_as_half") else "fp32"}
    return Recipe.from_dict(d, where=f"The merge recipe in {label}")


def recipe_from_checkpoint(path: str) -> Recipe:
    """The recipe embedded in a checkpoint: `alloy_recipe`, else the A1111 `sd_merge_recipe`."""
    from ..io import open_source
    from ..metadata import recipe_from_metadata
    label = os.path.basename(str(path))
    src = open_source(path, label=label)
    try:
        metadata = dict(src.metadata or {})
    finally:
        src.close()
    try:
        recipe = recipe_from_metadata(metadata) or _a1111_recipe(metadata, label)
    except AlloyError as e:
        raise AlloyError(f"{label}: {e}") from None
    if recipe is None:
        raise AlloyError(f"{label} carries no merge recipe in its metadata.")
    return recipe


def history_label(entry: dict) -> str:
    """"2025-01-01 12:00:00 live: A x (1-0.5) + B x 0.5 [short hash]"."""
    try:
        recipe = Recipe.from_dict(entry["recipe"])
        name, short = recipe.display_name(), recipe.short_hash()
    except (AlloyError, KeyError, TypeError):
        name, short = "?", "?"
    return f"{entry.get('time', '')} {entry.get('kind', '')}: {name} [{short}]"


def history_recipes(history, limit: int = 30) -> list[tuple[str, Recipe]]:
    """(label, recipe) of the newest entries that carry a recipe, newest first."""
    out = []
    for entry in history.entries() if history is not None else ():
        if not entry.get("recipe"):
            continue
        try:
            recipe = Recipe.from_dict(entry["recipe"])
        except (AlloyError, TypeError):
            continue
        out.append((history_label(entry), recipe))
        if len(out) >= limit:
            break
    return out


def history_choices(session) -> list[str]:
    """The labels the history dropdown offers for a session (newest first)."""
    return [label for label, _ in history_recipes(getattr(session, "history", None))]
