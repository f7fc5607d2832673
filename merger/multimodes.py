"""The multi-model merge modes as data: names, how many models each takes, which recipe fields it
uses, and the checks a recipe must pass before any file is opened (pure Python, no torch).

Models: ``model_a`` is the base θ₀; ``model_b`` … ``model_f`` are the fine-tunes θ₁…θₙ, filled in
order. ``weights`` holds one weight per fine-tune (None = all 1). The kernels are in
`merger.methods.taskvec`, `merger.methods.geometric` and `merger.methods.spherical`."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import AlloyError

TUNED_SLOTS = ("b", "c", "d", "e", "f")
EXTRA_SLOTS = ("d", "e", "f")            # slots only the multi-model modes take
MAX_TUNED = len(TUNED_SLOTS)
DENSITY_DEFAULT = 0.5
OUTLIERS_DEFAULT = 0.01


@dataclass(frozen=True)
class MultiMode:
    """One multi-model merge mode. `uses`: the recipe fields among weights / density / outliers / seed
    that change its result; `alpha_name`: what alpha means (λ scales the merged task vector, t is
    SLERP's interpolation)."""

    id: str
    label: str
    min_tuned: int
    max_tuned: int
    uses: frozenset
    alpha_default: float
    alpha_name: str
    summary: str
    aliases: tuple = ()


_ALL = (
    MultiMode("task_arithmetic", "Task arithmetic", 1, 5, frozenset({"weights"}), 1.0, "λ",
              "A + λ·Σ wᵢ(Mᵢ − A)", ("ta", "taskarith", "taskvector")),
    MultiMode("ties", "TIES", 1, 5, frozenset({"weights", "density"}), 1.0, "λ",
              "A + λ·disjoint mean of the top-d |τᵢ| agreeing with sign(Σ wᵢτ̂ᵢ)", ("tiesmerging",)),
    MultiMode("dare_linear", "DARE linear", 1, 5, frozenset({"weights", "density", "seed"}), 1.0, "λ",
              "A + λ·Σ wᵢ·mᵢτᵢ/d, mᵢ ~ Bernoulli(d)", ("dare",)),
    MultiMode("dare_ties", "DARE TIES", 1, 5, frozenset({"weights", "density", "seed"}), 1.0, "λ",
              "A + λ·disjoint mean of mᵢτᵢ/d agreeing with the elected sign", ()),
    MultiMode("breadcrumbs", "Breadcrumbs", 1, 5, frozenset({"weights", "density", "outliers"}), 1.0, "λ",
              "A + λ·Σ wᵢτᵢ without the top-γ |τᵢ|, keeping the next d", ("modelbreadcrumbs",)),
    MultiMode("model_stock", "Model stock", 2, 5, frozenset(), 1.0, "λ",
              "A + λ·t·mean(τᵢ), t = n·cos/(1 + (n−1)·cos)", ("stock",)),
    MultiMode("geometric_median", "Geometric median", 1, 5, frozenset({"weights"}), 1.0, "λ",
              "A + λ·(argmin_m Σ wᵢ‖Mᵢ − m‖ − A), A included with weight 1", ("median", "gm")),
    MultiMode("slerp", "SLERP", 1, 1, frozenset(), 0.5, "t",
              "(sin((1−t)Ω)·A + sin(tΩ)·B)/sin Ω, Ω = angle(A, B)", ("spherical",)),
)
MULTI_MODES = {m.id: m for m in _ALL}


def multi_mode(mode: str) -> MultiMode | None:
    """The MultiMode of a mode id, or None for the SuperMerger modes."""
    return MULTI_MODES.get(mode)


def alpha_default(mode: str) -> float:
    """alpha when a recipe gives none: λ = 1 (SLERP t = 0.5); 0.5 for the SuperMerger modes."""
    m = MULTI_MODES.get(mode)
    return m.alpha_default if m is not None else 0.5


def parse_weights(value) -> list[float] | None:
    """None / "" / [] → None (all 1); "1, 0.5" or [1, 0.5] → [1.0, 0.5]; AlloyError otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        tokens = [t for t in re.split(r"[,\s]+", value.strip()) if t]
    elif isinstance(value, (list, tuple)):
        tokens = list(value)
    else:
        raise AlloyError(f"weights must be a list of numbers like [1, 0.5], not {value!r}.")
    out = []
    for i, tok in enumerate(tokens, 1):
        try:
            v = float(tok) if not isinstance(tok, bool) else math.nan
        except (TypeError, ValueError):
            raise AlloyError(f"weights value {i} ({tok!r}) is not a number.") from None
        if not math.isfinite(v):
            raise AlloyError(f"weights value {i} ({tok!r}) is not a finite number.")
        out.append(v)
    return out or None


def format_weights(weights) -> str:
    """[1.0, 0.5] → "1,0.5" (the form of the UI field and the CLI option); None → ""."""
    if not weights:
        return ""
    return ",".join(str(int(w)) if float(w).is_integer() else repr(float(w)) for w in weights)


def tuned_slots(recipe) -> list[str]:
    """The fine-tune slots a recipe fills (B…F), in order."""
    return [s for s in TUNED_SLOTS if getattr(recipe, f"model_{s}", None)]


def _models_text(slots) -> str:
    names = [s.upper() for s in slots]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def check_recipe(recipe, mode_label: str) -> None:
    """Refuse bad combinations of a recipe's models and multi-model fields (one sentence each)."""
    d, g = float(recipe.density), float(recipe.outliers)
    if not (math.isfinite(d) and 0.0 < d <= 1.0):
        raise AlloyError(f"density must be greater than 0 and at most 1, not {recipe.density}.")
    if not (math.isfinite(g) and 0.0 <= g < 1.0):
        raise AlloyError(f"outliers must be at least 0 and less than 1, not {recipe.outliers}.")
    spec = MULTI_MODES.get(recipe.mode)
    extra = [s for s in EXTRA_SLOTS if getattr(recipe, f"model_{s}", None)]
    if spec is None:
        if extra:
            raise AlloyError(f"{mode_label} does not take model {extra[0].upper()}; models D, E and F are "
                             f"used only by the multi-model modes ({', '.join(MULTI_MODES)}).")
        return
    if recipe.calc != "normal":
        raise AlloyError(f"{spec.label} works with calculation mode normal only, not {recipe.calc}.")
    slots = tuned_slots(recipe)
    for i, slot in enumerate(TUNED_SLOTS):
        if slot not in slots and any(s in slots for s in TUNED_SLOTS[i + 1:]):
            later = next(s for s in TUNED_SLOTS[i + 1:] if s in slots)
            raise AlloyError(f"Model {later.upper()} is set but model {slot.upper()} is empty; fill the "
                             f"models in order (B, C, D, E, F).")
    n = len(slots)
    if spec.id == "slerp" and n > 1:
        raise AlloyError(f"SLERP merges exactly two models, A and B; clear model {slots[1].upper()}.")
    if n < spec.min_tuned:
        need = "model B" if spec.min_tuned == 1 else "models B and C"
        raise AlloyError(f"{spec.label} needs at least {spec.min_tuned + 1} models: the base A and "
                         f"{need}{' (two fine-tunes)' if spec.min_tuned == 2 else ''}.")
    weights = parse_weights(recipe.weights)
    if weights is not None and "weights" in spec.uses:
        if len(weights) != n:
            raise AlloyError(f"weights has {len(weights)} value{'s' * (len(weights) != 1)} but {spec.label} "
                             f"merges {n} fine-tuned model{'s' * (n != 1)} ({_models_text(slots)}); "
                             f"give one weight per model.")
        if spec.id == "geometric_median" and any(w <= 0 for w in weights):
            raise AlloyError(f"Geometric median weights must be greater than 0, not {format_weights(weights)}.")


def used_weights(recipe) -> tuple[float, ...]:
    """One weight per fine-tune (1 where the recipe gives none)."""
    weights = parse_weights(recipe.weights)
    n = len(tuned_slots(recipe))
    return tuple(weights) if weights is not None else (1.0,) * n


def identity_fields(recipe) -> dict:
    """The multi-model fields that decide a merge's result (merged into Recipe.identity): nothing
    for the SuperMerger modes, so their recipe hashes stay as they were; for a multi-model mode the
    extra models and the fields it uses (weights of 1 written as None)."""
    spec = MULTI_MODES.get(recipe.mode)
    if spec is None:
        return {}
    out = {f"model_{s}": getattr(recipe, f"model_{s}") for s in EXTRA_SLOTS}
    if "weights" in spec.uses:
        w = used_weights(recipe)
        out["weights"] = None if all(x == 1.0 for x in w) else list(w)
    if "density" in spec.uses:
        out["density"] = float(recipe.density)
    if "outliers" in spec.uses:
        out["outliers"] = float(recipe.outliers)
    return out
