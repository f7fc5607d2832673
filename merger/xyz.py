"""X/Y/Z plot axes (WebUI-free logic; merger/webui.py registers them with the xyz_grid script).

An axis's `apply(p, x, xs)` only records `x` in a per-cell dict on the processing object
(`p.alloy_xyz`, copied on write because the grid makes shallow copies of `p`). The merge happens
once per cell in the always-visible script's `before_process`, after every axis of the cell was
applied, and only when the cell's recipe differs from the loaded one (Session.merge_live skips an
identical recipe), so seed/prompt axes never trigger merges. The axes have a high `cost`, so the
grid loops over them outermost: 5 alpha values × 3 seeds → 5 merges in any axis slot."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import AlloyError
from .multimodes import TUNED_SLOTS, parse_weights, tuned_slots, used_weights
from .recipe import CALCS, MODE_LABELS, Recipe

PENDING_ATTR = "alloy_xyz"
NONE_WORDS = ("", "none", "null", "-")


@dataclass(frozen=True)
class AxisSpec:
    label: str
    field: str            # Recipe field, or "recipe" (a recipe file loaded first)
    type: type
    cost: float
    choices: str | None = None   # "models" | "calcs" | "modes" (dropdown), None = free text


AXES: tuple[AxisSpec, ...] = (
    AxisSpec("[Alloy] Alpha", "alpha", float, 0.8),
    AxisSpec("[Alloy] Beta", "beta", float, 0.8),
    AxisSpec("[Alloy] Block weights alpha", "alpha_blocks", str, 0.8),
    AxisSpec("[Alloy] Block weights beta", "beta_blocks", str, 0.8),
    AxisSpec("[Alloy] Model B", "model_b", str, 0.85, "models"),
    AxisSpec("[Alloy] Model C", "model_c", str, 0.85, "models"),
    AxisSpec("[Alloy] Calc mode", "calc", str, 0.8, "calcs"),
    AxisSpec("[Alloy] Merge mode", "mode", str, 0.8, "modes"),
    AxisSpec("[Alloy] Elemental", "elemental", str, 0.8),
    AxisSpec("[Alloy] Recipe file", "recipe", str, 0.9),
    AxisSpec("[Alloy] Random seed", "seed", int, 0.8),      # also the DARE masks' seed
    # multi-model modes (TIES, DARE, …): models D–F, density, outliers, weights
    *(AxisSpec(f"[Alloy] Model {s.upper()}", f"model_{s}", str, 0.85, "models") for s in "def"),
    AxisSpec("[Alloy] Density", "density", float, 0.85),
    AxisSpec("[Alloy] Outliers", "outliers", float, 0.85),
    AxisSpec("[Alloy] Weights", "weights", str, 0.85),
    *(AxisSpec(f"[Alloy] Weight {s.upper()}", f"weight_{s}", float, 0.8) for s in TUNED_SLOTS),
)
OPTIONAL = ("model_c", "model_d", "model_e", "model_f", "alpha_blocks", "beta_blocks", "weights")
PER_MODEL_WEIGHT = "weight_"


def set_pending(p, field: str, value) -> None:
    """Record one axis value for this cell (copy-on-write: the grid shares dicts between copies)."""
    d = dict(getattr(p, PENDING_ATTR, None) or {})
    d[field] = value
    setattr(p, PENDING_ATTR, d)


def pending(p) -> dict:
    return dict(getattr(p, PENDING_ATTR, None) or {})


def _field_value(field: str, value):
    """Axis text → Recipe field value ("None" clears optional fields)."""
    if field in ("alpha", "beta", "density", "outliers") or field.startswith(PER_MODEL_WEIGHT):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise AlloyError(f"X/Y/Z {field} value '{value}' is not a number.") from None
    if field == "seed":
        from .dice import check_seed
        return check_seed(value)
    if field in OPTIONAL and str(value).strip().lower() in NONE_WORDS:
        return None
    if field == "weights":
        return parse_weights(str(value))
    return str(value).strip()


def _with_model_weights(recipe: Recipe, per_model: dict) -> Recipe:
    """`recipe` with the weight of single fine-tunes replaced ({"weight_c": 0.5, …})."""
    slots = tuned_slots(recipe)
    weights = list(used_weights(recipe))
    for field, value in per_model.items():
        slot = field[len(PER_MODEL_WEIGHT):]
        if slot not in slots:
            raise AlloyError(f"X/Y/Z weight of model {slot.upper()}: the recipe has no model {slot.upper()}.")
        weights[slots.index(slot)] = value
    return recipe.replace(weights=weights)


def cell_recipe(base: Recipe, overrides: dict, load=Recipe.load) -> Recipe:
    """The recipe of one cell: a recipe file first (when given), then every other axis value.
    `load(name)` reads a recipe file (Session.load_recipe_file: only inside the models or the
    data folder); its models are found by sha256, then name, when the cell merges."""
    recipe = load(str(overrides["recipe"])) if overrides.get("recipe") else base
    values = {f: _field_value(f, v) for f, v in overrides.items() if f != "recipe"}
    changes = {f: v for f, v in values.items() if not f.startswith(PER_MODEL_WEIGHT)}
    recipe = recipe.replace(**changes) if changes else recipe
    per_model = {f: v for f, v in values.items() if f.startswith(PER_MODEL_WEIGHT)}
    if per_model:
        recipe = _with_model_weights(recipe, per_model)
    recipe.validate()
    return recipe


def choices_for(kind: str | None, session):
    if kind == "models":
        return lambda: session.host.list_models()
    if kind == "calcs":
        return lambda: list(CALCS)
    if kind == "modes":
        return lambda: list(MODE_LABELS.values())
    return None


def make_axes(axis_option_cls, session) -> list:
    """AxisOption objects for every AXES entry (`axis_option_cls` is xyz_grid.AxisOption)."""
    out = []
    for spec in AXES:
        def apply(p, x, xs, _field=spec.field):
            set_pending(p, _field, x)

        def confirm(p, xs, _spec=spec):
            if _spec.field != "recipe":
                confirm_base(session)
            for x in xs:
                _confirm_value(_spec, x, session)
            if _spec.field == "seed":
                fix_seeds(xs)

        extra = {"format_value": seed_formatter(session)} if spec.field == "seed" else {}
        out.append(axis_option_cls(spec.label, spec.type, apply, confirm=confirm, cost=spec.cost,
                                   choices=choices_for(spec.choices, session), **extra))
    return out


def fix_seeds(xs: list) -> None:
    """Replace every −1 in the axis values, in place, by a new seed: the grid's labels (computed
    before the cells run) then show the lists that the cells draw."""
    from .dice import new_seed
    for i, x in enumerate(xs):
        if int(x) == -1:
            xs[i] = new_seed()


def seed_label(session, seed: int) -> str:
    """`seed S: alpha 0.12, 0.5, …` for the tab's setup (the label of a Random seed cell)."""
    from .arch import detect
    from .dice import roll, wanted
    from .io import open_source
    from .dice import uses_seed
    base = session.xyz_base()
    if not wanted(base):
        return f"seed {seed}" if uses_seed(base) else f"seed {seed} (no random tokens)"
    with open_source(session.host.resolve_model(base.model_a), label="model A") as src:
        arch = detect(src.keys(), label="model A")
    r = roll(base.replace(seed=int(seed)), arch)
    lists = [f"{w} " + getattr(r, f"{w}_blocks").replace(",", ", ") for w in ("alpha", "beta") if r.dice.get(w)]
    return f"seed {seed}: " + "; ".join(lists)


def seed_formatter(session):
    def format_value(p, opt, x):
        try:
            return seed_label(session, x)
        except Exception:  # a label must never stop the grid
            return f"{opt.label}: {x}"
    return format_value


def confirm_base(session) -> None:
    """Refuse the grid before it starts when the recipe its cells start from cannot be merged here
    (none set up, or its model A is not in this WebUI's list) instead of failing in every cell."""
    session.host.resolve_model(session.xyz_base().model_a)


def _confirm_value(spec: AxisSpec, x, session) -> None:
    """Refuse a bad value before the grid starts (raises AlloyError)."""
    if spec.field.startswith("model_"):
        if str(x).strip().lower() not in NONE_WORDS:
            session.host.resolve_model(str(x))
    elif spec.field == "recipe":
        session.resolve(session.load_recipe_file(str(x)))
    elif spec.field in ("mode", "calc"):
        Recipe(model_a="a", **{spec.field: str(x)})
    else:
        _field_value(spec.field, x)


def run_cell(session, p):
    """Merge the cell's recipe into the live model unless it is already loaded; None when the
    cell has no Alloy axis."""
    overrides = pending(p)
    if not overrides:
        return None
    recipe = cell_recipe(session.xyz_base(), overrides, load=session.load_recipe_file)
    report = session.merge_live(recipe)
    session.xyz_touched = True
    return report


def finish_grid(session, before, restore: bool | None = None) -> str | None:
    """After a grid: with the setting on (or `restore`, a per-request override, when not None), put
    back what was loaded before it (`before`: the live recipe before the grid, or None = the
    original model)."""
    touched = getattr(session, "xyz_touched", False)
    session.xyz_touched = False
    wanted = session.settings.restore_after_xyz if restore is None else bool(restore)
    if not touched or not wanted:
        return None
    if before is not None:
        session.merge_live(before)
        return f"Alloy: merged {before.display_name()} back after the grid."
    return session.restore()
