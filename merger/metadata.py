"""File metadata: our recipe plus the A1111-compatible `sd_merge_recipe` / `sd_merge_models` (§12.3)."""
from __future__ import annotations

import json

from .recipe import Recipe, file_name

A1111_INTERP = {"weight_sum": "Weighted sum", "add_difference": "Add difference"}
RECIPE_KEY = "alloy_recipe"


def _json_field(metadata: dict, key: str):
    try:
        value = json.loads(metadata.get(key) or "null")
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def merge_metadata(recipe: Recipe, sources: dict, plan=None, legacy_hashes: dict | None = None,
                   names: dict | None = None) -> dict:
    """Build the safetensors `__metadata__` for a merged checkpoint.

    `sd_merge_recipe` keeps A1111's field names (primary/secondary/tertiary_model_hash, interp_method,
    multiplier, …) so tools that read the built-in merger's metadata understand ours; `sd_merge_models`
    maps each input's sha256 to its name and legacy hash and carries the inputs' own ancestry.
    Models are named by file name (`names` {slot: name}, default the inputs' file names) and
    sha256: no local path goes into a file that may be shared."""
    names = names or {}
    hashes = recipe.hashes or {}
    legacy_hashes = legacy_hashes or {}
    channels = None
    if plan is not None:
        first = plan.arch.adjust_keys.get("in_w") if plan.arch.adjust_keys else None
        if first and first in plan:
            channels = plan[first].shape[1] if len(plan[first].shape) > 1 else None
    a1111 = {
        "type": "alloy",
        "primary_model_hash": hashes.get("a"),
        "secondary_model_hash": hashes.get("b"),
        "tertiary_model_hash": hashes.get("c") if "c" in sources else None,
        "interp_method": A1111_INTERP.get(recipe.mode, recipe.mode),
        "multiplier": recipe.alpha,
        "save_as_half": recipe.dtype == "fp16",
        "custom_name": "",
        "config_source": 0,
        "bake_in_vae": (names.get("vae") or file_name(recipe.bake_vae)) if recipe.bake_vae else "None",
        "discard_weights": "",
        "is_inpainting": channels == 9,
        "is_instruct_pix2pix": channels == 8,
        "calc": recipe.calc,
        "alpha_blocks": recipe.alpha_blocks,
        "beta": recipe.beta,
        "beta_blocks": recipe.beta_blocks,
        "recipe_hash": recipe.short_hash(),
    }
    models = {}
    for slot, src in sources.items():
        sha = hashes.get(slot)
        if not sha:
            continue
        models[sha] = {
            "name": names.get(slot) or file_name(src.path),
            "legacy_hash": legacy_hashes.get(slot),
            "sd_merge_recipe": _json_field(src.metadata, "sd_merge_recipe"),
        }
        models.update(_json_field(src.metadata, "sd_merge_models") or {})
    return {
        "format": "pt",
        RECIPE_KEY: recipe.shared(names).to_json(indent=None),
        "sd_merge_recipe": json.dumps(a1111),
        "sd_merge_models": json.dumps(models),
    }


def recipe_from_metadata(metadata: dict) -> Recipe | None:
    """The Alloy recipe embedded in a checkpoint's metadata, or None."""
    text = (metadata or {}).get(RECIPE_KEY)
    return Recipe.from_json(text) if text else None
