"""The tab's controls as plain data: field names, defaults, and the Recipe <-> fields mapping.

Gradio-free, so the mapping is tested without a browser. A *fields* dict maps a field name to the
value its control holds (model display names, the mode's label, numbers, texts).
"""
from __future__ import annotations

import os

from ..errors import AlloyError
from ..multimodes import DENSITY_DEFAULT, OUTLIERS_DEFAULT, format_weights, multi_mode
from ..recipe import MODE_LABELS, MODES, Recipe, normalize_mode

ADJUST_NAMES = ("IN", "OUT", "OUT2", "CONT", "BRI", "COL1", "COL2", "COL3")
ADJUST_FIELDS = tuple(f"adjust_{i}" for i in range(len(ADJUST_NAMES)))
MODE_CHOICES = tuple(MODE_LABELS[m] for m in MODES)
OUT_DTYPES = ("fp16", "bf16", "fp32", "keep", "fp8_e4m3fn", "fp8_e5m2")
COMPUTE_DTYPES = ("fp32", "fp64")
#: random block-weight limits (merger.dice): X upper/lower (D centre/width), clamp max/min, decimals
DICE_DEFAULTS = {"upper": "1", "lower": "0", "max": "1", "min": "0", "round": 3}

#: every field that a Recipe fills, with the value a fresh tab shows
RECIPE_DEFAULTS = {
    "model_a": None, "model_b": None, "model_c": None, "model_d": None, "model_e": None, "model_f": None,
    "mode": MODE_LABELS["weight_sum"], "calc": "normal",
    "alpha": 0.5, "beta": 0.25, "gamma": 0.3,
    "alpha_blocks": "", "beta_blocks": "",
    "weights": "", "density": DENSITY_DEFAULT, "outliers": OUTLIERS_DEFAULT,
    "elemental": "", "include": "", "exclude": "",
    **{name: 0.0 for name in ADJUST_FIELDS},
    "dtype": "fp16", "compute_dtype": "fp32", "prune": False, "bake_vae": "",
    "fix_clip_ids": False, "seed": 0,
    **{f"dice_{k}": v for k, v in DICE_DEFAULTS.items()},
}
RECIPE_FIELDS = tuple(RECIPE_DEFAULTS)
MODEL_FIELDS = tuple(f"model_{s}" for s in "abcdef")


def model_slots(mode: str, needs_c: bool) -> tuple:
    """The model pickers a mode shows: A, B (and C when it needs one); SLERP A, B; the other
    multi-model modes A to F. Hidden pickers do not reach the recipe (multi-model modes)."""
    spec = multi_mode(mode)
    if spec is None:
        return ("a", "b", "c") if needs_c else ("a", "b")
    return ("a", "b", "c", "d", "e", "f")[: spec.max_tuned + 1]


def mode_label(mode: str) -> str:
    """The label the mode radio shows for a mode id or any accepted spelling."""
    return MODE_LABELS[normalize_mode(mode)]


def adjust_text(values) -> str:
    """Eight Adjust numbers -> "IN,OUT,OUT2,CONT,BRI,COL1,COL2,COL3"; all zero -> "" (Adjust off)."""
    nums = [float(v or 0.0) for v in values]
    if len(nums) != len(ADJUST_NAMES):
        raise AlloyError(f"Adjust needs {len(ADJUST_NAMES)} numbers, got {len(nums)}.")
    if all(v == 0.0 for v in nums):
        return ""
    return ",".join(_num(v) for v in nums)


def adjust_values(text: str) -> list[float]:
    """Inverse of `adjust_text`: "" -> eight zeros; fewer numbers are padded with zeros."""
    text = (text or "").strip()
    if not text:
        return [0.0] * len(ADJUST_NAMES)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > len(ADJUST_NAMES):
        raise AlloyError(f"Adjust takes at most {len(ADJUST_NAMES)} numbers, got {len(parts)}: '{text}'.")
    try:
        nums = [float(p) if p else 0.0 for p in parts]
    except ValueError:
        raise AlloyError(f"Adjust must be comma-separated numbers, not '{text}'.") from None
    return nums + [0.0] * (len(ADJUST_NAMES) - len(nums))


def _num(v: float) -> str:
    """Shortest plain text for a number: 0.5 -> "0.5", 1.0 -> "1"."""
    v = round(float(v), 6)
    return str(int(v)) if v == int(v) else repr(v)


def _text(v) -> str:
    return "" if v is None else str(v)


def recipe_from_fields(f: dict) -> Recipe:
    """Build the Recipe the controls describe (models stay as the names the dropdowns show).

    Raises AlloyError with a sentence when a value is unusable."""
    if not f.get("model_a"):
        raise AlloyError("Choose model A first.")
    try:
        seed = int(float(f.get("seed") or 0))
    except (TypeError, ValueError):
        raise AlloyError(f"seed must be an integer, not '{f.get('seed')}'.") from None
    mode = normalize_mode(f.get("mode") or "weight_sum")
    spec = multi_mode(mode)
    multi = {"model_c": f.get("model_c") or None}
    if spec is not None:       # the multi-model fields and the models C–F its mode shows
        shown = model_slots(mode, False)
        multi = {f"model_{s}": (f.get(f"model_{s}") or None) if s in shown else None for s in "cdef"}
        multi.update(density=f.get("density", DENSITY_DEFAULT), outliers=f.get("outliers", OUTLIERS_DEFAULT))
        if "weights" in spec.uses:
            multi["weights"] = _text(f.get("weights")).strip() or None
    recipe = Recipe(
        model_a=f["model_a"], model_b=f.get("model_b") or None,
        mode=mode, calc=f.get("calc") or "normal",
        alpha=f.get("alpha", 0.5), beta=f.get("beta", 0.25), gamma=f.get("gamma", 0.3),
        alpha_blocks=_text(f.get("alpha_blocks")).strip() or None,
        beta_blocks=_text(f.get("beta_blocks")).strip() or None,
        elemental=_text(f.get("elemental")), include=_text(f.get("include")),
        exclude=_text(f.get("exclude")),
        adjust=adjust_text([f.get(name, 0.0) for name in ADJUST_FIELDS]),
        dtype=f.get("dtype") or "fp16", compute_dtype=f.get("compute_dtype") or "fp32",
        prune=bool(f.get("prune")), bake_vae=_text(f.get("bake_vae")).strip() or None,
        fix_clip_ids=bool(f.get("fix_clip_ids")), seed=seed, dice=dice_from_fields(f), **multi,
    )
    recipe.validate()
    return recipe


def fields_from_recipe(recipe: Recipe, model_names=()) -> dict:
    """The control values showing `recipe`; model paths are mapped to the host's names if listed."""
    adj = adjust_values(recipe.adjust)
    return {
        **{name: match_model_name(getattr(recipe, name), model_names) for name in MODEL_FIELDS},
        "mode": mode_label(recipe.mode), "calc": recipe.calc,
        "alpha": float(recipe.alpha), "beta": float(recipe.beta), "gamma": float(recipe.gamma),
        "alpha_blocks": recipe.alpha_blocks or "", "beta_blocks": recipe.beta_blocks or "",
        "weights": format_weights(recipe.weights), "density": float(recipe.density),
        "outliers": float(recipe.outliers),
        "elemental": recipe.elemental, "include": recipe.include, "exclude": recipe.exclude,
        **dict(zip(ADJUST_FIELDS, adj)),
        "dtype": recipe.dtype, "compute_dtype": recipe.compute_dtype, "prune": bool(recipe.prune),
        "bake_vae": recipe.bake_vae or "", "fix_clip_ids": bool(recipe.fix_clip_ids),
        "seed": int(recipe.seed),
        **{f"dice_{k}": (recipe.dice or {}).get(k, v) for k, v in DICE_DEFAULTS.items()},
    }


def dice_from_fields(f: dict) -> dict | None:
    """The random-weight limits when a block list holds random tokens, else None."""
    from ..dice import has_tokens
    if not (has_tokens(_text(f.get("alpha_blocks"))) or has_tokens(_text(f.get("beta_blocks")))):
        return None
    out = {k: _text(f.get(f"dice_{k}", v)).strip() or str(v) for k, v in DICE_DEFAULTS.items()}
    try:
        out["round"] = int(float(out["round"]))
    except ValueError:
        raise AlloyError(f"Round (decimals) must be a whole number, not '{out['round']}'.") from None
    return out


def _stem(name: str) -> str:
    """"dir/model.safetensors [abcd1234]" -> "model" (the WebUI title's hash suffix is dropped)."""
    base = os.path.basename(str(name).split(" [")[0].replace("\\", "/"))
    root, ext = os.path.splitext(base)
    return root if ext.lower() in (".safetensors", ".ckpt", ".pt", ".bin") else base


def match_model_name(value: str | None, model_names) -> str | None:
    """Map a recipe's model (path, title or file name) to an entry of `model_names`.

    Exact match first, then the same file stem; unmatched values are returned unchanged so the
    dropdown shows what the recipe asked for (the merge then reports it as unknown)."""
    if not value:
        return None
    names = list(model_names)
    if value in names:
        return value
    stem = _stem(value)
    for name in names:
        if _stem(name) == stem:
            return name
    return value
