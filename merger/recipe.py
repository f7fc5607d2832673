"""The one recipe type: UI, X/Y/Z, CLI, API, history and file metadata all use `Recipe`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import ntpath
from dataclasses import dataclass, field

from .errors import AlloyError
from .modes import (CALCS, CLASSIC_MODES, MODE_LABELS, MODES, MODES_NEEDING_C,  # noqa: F401 (re-exported)
                    effective_mode, normalize_calc, normalize_mode)
from .multimodes import (DENSITY_DEFAULT, MAX_TUNED, OUTLIERS_DEFAULT, alpha_default, check_recipe, identity_fields,
                         parse_weights)
from .schema import Custom, Flag, Hashes, ListOf, Number, Text, check_object

DTYPES = ("fp16", "bf16", "fp32", "keep", "fp8_e4m3fn", "fp8_e5m2")
COMPUTE_DTYPES = ("fp32", "fp64")
RECIPE_TYPE = "alloy-merge"
RECIPE_VERSION = 1
RATIO_LIMIT = 100.0           # |alpha|, |beta|, |gamma|: SuperMerger's sliders span about -1..2
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)
MAX_RECIPE_BYTES = 16 << 20
MODEL_SLOTS = {"a": "model_a", "b": "model_b", "c": "model_c", "d": "model_d", "e": "model_e", "f": "model_f",
               "vae": "bake_vae"}

_NAME = Text(4096, optional=True, line=False)     # paths may hold any character but NUL (CLI)
_LIMITS = Text(20_000, optional=True)
# Random block weights (merger.dice): the seed drawn with, the token texts and the limits.
DICE_SCHEMA = {"seed": Number(0, (1 << 32) - 1, integer=True, optional=True),
               "alpha": _LIMITS, "beta": _LIMITS, "upper": _LIMITS, "lower": _LIMITS, "max": _LIMITS,
               "min": _LIMITS, "round": Number(0, 15, integer=True, optional=True)}
_RATIO = Number(-RATIO_LIMIT, RATIO_LIMIT)
SCHEMA = {
    "type": Text(64, optional=True, choices=(RECIPE_TYPE,)),
    "version": Number(1, RECIPE_VERSION, integer=True, optional=True),
    "model_a": Text(4096, nonempty=True, line=False), "model_b": _NAME, "model_c": _NAME,
    "model_d": _NAME, "model_e": _NAME, "model_f": _NAME,
    "mode": Text(64), "calc": Text(64),
    "alpha": _RATIO, "beta": _RATIO, "gamma": _RATIO,
    "alpha_blocks": Text(20_000, optional=True), "beta_blocks": Text(20_000, optional=True),
    "weights": ListOf(_RATIO, max_len=MAX_TUNED, optional=True),
    "density": Number(0.0, 1.0), "outliers": Number(0.0, 1.0),
    "elemental": Text(100_000, optional=True, line=False),
    "include": Text(20_000, optional=True), "exclude": Text(20_000, optional=True),
    "adjust": Text(1000, optional=True),
    "dtype": Text(16, choices=DTYPES), "compute_dtype": Text(16, choices=COMPUTE_DTYPES),
    "prune": Flag(), "bake_vae": _NAME, "fix_clip_ids": Flag(),
    "seed": Number(*SEED_RANGE, integer=True),
    "hashes": Hashes(slots=tuple(MODEL_SLOTS)),
    "dice": Custom(lambda v, label: check_object(v, DICE_SCHEMA, label, defaults=False), optional=True),
}


@dataclass
class Recipe:
    """Everything that determines a merge's result. JSON-serialisable; see docs/DESIGN.md."""

    model_a: str
    model_b: str | None = None
    model_c: str | None = None
    model_d: str | None = None       # models D…F: fine-tunes of the multi-model modes only
    model_e: str | None = None
    model_f: str | None = None
    mode: str = "weight_sum"
    calc: str = "normal"
    alpha: float | None = None       # None: the mode's default (0.5; λ = 1 for task-vector modes)
    beta: float = 0.25
    gamma: float = 0.3
    alpha_blocks: str | None = None
    beta_blocks: str | None = None
    weights: list | None = None      # one per fine-tune B…F (multi-model modes); None = all 1
    density: float = DENSITY_DEFAULT
    outliers: float = OUTLIERS_DEFAULT
    elemental: str = ""
    include: str = ""
    exclude: str = ""
    adjust: str = ""
    dtype: str = "fp16"
    compute_dtype: str = "fp32"
    prune: bool = False
    bake_vae: str | None = None
    fix_clip_ids: bool = False
    seed: int = 0
    hashes: dict = field(default_factory=dict)
    # Random block weights (merger.dice): the limits before the draw; after it also the token texts
    # and the seed ({"seed", "alpha", "beta", "upper", "lower", "max", "min", "round"}). The drawn
    # numbers themselves are in alpha_blocks / beta_blocks. None = no random weights.
    dice: dict | None = None

    # ---- construction -------------------------------------------------------------------
    def __post_init__(self):
        self.calc = normalize_calc(self.calc)
        self.mode = effective_mode(self.calc, normalize_mode(self.mode))
        if self.alpha is None:
            self.alpha = alpha_default(self.mode)
        self.weights = parse_weights(self.weights)
        for name in ("model_b", "model_c", "model_d", "model_e", "model_f", "alpha_blocks", "beta_blocks",
                     "bake_vae"):
            v = getattr(self, name)
            if v is not None and str(v).strip() == "":
                setattr(self, name, None)
        for name in ("elemental", "include", "exclude", "adjust"):
            v = getattr(self, name)
            setattr(self, name, "" if v is None else str(v))

    @classmethod
    def from_dict(cls, d: dict, where: str = "The recipe") -> "Recipe":
        """A recipe from JSON data (file, request, history, PNG info): every field type-checked."""
        d = check_object(d, SCHEMA, where, required=("model_a",), defaults=False)
        d.pop("type", None)
        d.pop("version", None)
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise AlloyError(f"The recipe is not valid JSON ({e.msg} at line {e.lineno}).") from None
        except RecursionError:
            raise AlloyError("The recipe is not valid JSON (nested too deeply).") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str) -> "Recipe":
        """A recipe file (at most 16 MiB of UTF-8 JSON); every problem is one sentence naming it."""
        from .paths import check_input_file, shown
        check_input_file(path, "recipe file")
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_RECIPE_BYTES + 1)
        except OSError as e:
            raise AlloyError(f"Cannot read recipe file {shown(path)}: {e.strerror}.") from None
        if len(raw) > MAX_RECIPE_BYTES:
            raise AlloyError(f"Recipe file {shown(path)} is larger than {MAX_RECIPE_BYTES >> 20} MiB.")
        try:
            return cls.from_json(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise AlloyError(f"Recipe file {shown(path)} is not UTF-8 text.") from None
        except AlloyError as e:
            raise AlloyError(f"Recipe file {shown(path)}: {e}") from None

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        """All fields; a SuperMerger-mode recipe leaves out the multi-model fields it does not set,
        so its JSON is what it was before those modes existed."""
        d = {"type": RECIPE_TYPE, "version": RECIPE_VERSION}
        d.update(dataclasses.asdict(self))
        if d["dice"] is None:
            del d["dice"]
        if self.mode in CLASSIC_MODES:
            for name, default in _MULTI_FIELDS.items():
                if d[name] == default:
                    del d[name]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def shared(self, names: dict | None = None, *, short: bool = False) -> "Recipe":
        """The form written into files and infotext: models by file name (`names[slot]`, else the
        path's base name) and sha256 (`short`: the first 10 hex digits, as the WebUI shows), so
        no local folder leaves the machine."""
        names = names or {}
        changes = {field: names.get(slot) or file_name(getattr(self, field))
                   for slot, field in MODEL_SLOTS.items() if getattr(self, field)}
        hashes = {slot: (h[:10] if short else h) for slot, h in (self.hashes or {}).items() if h}
        return self.replace(**changes, hashes=hashes)

    # ---- identity -----------------------------------------------------------------------
    def identity(self) -> dict:
        """The fields that decide the merged tensors (not where the result goes).

        Models are identified by the first 10 hex digits of their sha256 where known (so a recipe
        from an infotext, with short hashes, is the same recipe), else by name or path."""
        d = dataclasses.asdict(self)
        hashes = d.pop("hashes") or {}
        d.pop("dice")     # the drawn numbers are in the block lists; the token text does not change tensors
        for name in _MULTI_FIELDS:      # SuperMerger-mode hashes stay as they were before these fields
            del d[name]
        d.update(identity_fields(self))
        for slot, key in MODEL_SLOTS.items():
            if d.get(key) is not None and hashes.get(slot):
                d[key] = "sha256:" + hashes[slot][:10]
        if self.mode == "weight_sum" and self.calc == "normal":
            d["model_c"] = None
        return d

    def short_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    # ---- validation (no file access) ------------------------------------------------------
    def validate(self) -> None:
        """Every field's type and range (the schema of `from_dict`), then the combinations."""
        fields = dataclasses.asdict(self)
        clean = check_object(fields, SCHEMA, "The recipe", required=("model_a",), defaults=False)
        for name in ("alpha", "beta", "gamma", "seed", "density", "outliers"):
            setattr(self, name, clean[name])
        if self.mode not in MODES:
            raise AlloyError(f"Unknown merge mode '{self.mode}'.")
        if self.calc not in CALCS:
            raise AlloyError(f"Unknown calculation mode '{self.calc}'.")
        if self.dtype not in DTYPES:
            raise AlloyError(f"Unknown output precision '{self.dtype}'; choose one of: {', '.join(DTYPES)}.")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise AlloyError(f"Unknown compute precision '{self.compute_dtype}'; choose fp32 or fp64.")
        if not self.model_a:
            raise AlloyError("Model A is required.")
        if not self.model_b:
            raise AlloyError("Model B is required.")
        if self.include.strip() and self.exclude.strip():
            raise AlloyError("Use either include or exclude, not both.")
        check_recipe(self, MODE_LABELS[self.mode])

    # ---- naming ---------------------------------------------------------------------------
    def display_name(self) -> str:
        """SuperMerger-style merge name (§12.1), e.g. "A x (1-0.3) + B x 0.3"."""
        a, b, c = (_stem(self.model_a), _stem(self.model_b), _stem(self.model_c))
        al, be = _r3(self.alpha), _r3(self.beta)
        if self.mode not in CLASSIC_MODES:
            return self._multi_name(a, al)
        if self.mode == "weight_sum":
            s = f"{a} x (1-{al}) + {b} x {al}"
        elif self.mode == "add_difference":
            s = f"{a} + ({b} - {c}) x {al}"
        elif self.mode == "triple_sum":
            s = f"{a} x (1-{al}-{be}) + {b} x {al} + {c} x {be}"
        else:
            s = f"({a} x (1-{al}) + {b} x {al}) x (1-{be}) + {c} x {be}"
        if self.alpha_blocks:
            s += f" (alpha={self.alpha_blocks})"
        if self.beta_blocks and self.mode in ("triple_sum", "sum_twice"):
            s += f" (beta={self.beta_blocks})"
        if self.calc != "normal":
            s += f"_{self.calc}"
        return s

    def _multi_name(self, a: str, al: str) -> str:
        """"TIES(A; B, C) x 1 (d=0.5)", "SLERP(A, B) t=0.5"."""
        from .multimodes import MULTI_MODES, TUNED_SLOTS
        spec = MULTI_MODES[self.mode]
        tuned = [_stem(getattr(self, f"model_{s}")) for s in TUNED_SLOTS if getattr(self, f"model_{s}")]
        if self.mode == "slerp":
            s = f"SLERP({a}, {', '.join(tuned)}) t={al}"
        else:
            s = f"{spec.label}({a}; {', '.join(tuned)}) x {al}"
        extras = []
        if "weights" in spec.uses and self.weights:
            extras.append("w=" + ",".join(_r3(w) for w in self.weights))
        if "density" in spec.uses:
            extras.append(f"d={_r3(self.density)}")
        if "outliers" in spec.uses:
            extras.append(f"g={_r3(self.outliers)}")
        if "seed" in spec.uses:
            extras.append(f"seed={self.seed}")
        if extras:
            s += f" ({', '.join(extras)})"
        if self.alpha_blocks:
            s += f" ({'t' if self.mode == 'slerp' else 'alpha'}={self.alpha_blocks})"
        return s


_MULTI_FIELDS = {"model_d": None, "model_e": None, "model_f": None, "weights": None,
                 "density": DENSITY_DEFAULT, "outliers": OUTLIERS_DEFAULT}


def file_name(path: str | None) -> str | None:
    """The file name of a path or WebUI title ("sub/x.safetensors [0123456789]" -> "x.safetensors"),
    for either path separator."""
    if not path:
        return path
    text = str(path)
    if text.endswith("]") and " [" in text:
        text = text[: text.rindex(" [")]
    return ntpath.basename(text) or text


def _stem(path: str | None) -> str:
    """The file name without its model extension; control characters escaped (it goes into
    messages and the infotext's `Alloy merge`)."""
    if not path:
        return "?"
    base = file_name(path)
    if not base.isprintable():
        base = repr(base)[1:-1]
    for ext in (".safetensors", ".ckpt", ".pt", ".bin"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def _r3(x: float) -> str:
    v = round(float(x), 3)
    return str(int(v)) if v == int(v) else repr(v)
