"""The one recipe type: UI, X/Y/Z, CLI, API, history and file metadata all use `Recipe`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from .errors import AlloyError

MODES = ("weight_sum", "add_difference", "triple_sum", "sum_twice")
CALCS = ("normal", "cosineA", "cosineB", "trainDifference", "smoothAdd", "extract", "tensor", "tensor2", "self")
DTYPES = ("fp16", "bf16", "fp32", "keep")
COMPUTE_DTYPES = ("fp32", "fp64")

MODE_LABELS = {
    "weight_sum": "Weight sum",
    "add_difference": "Add difference",
    "triple_sum": "Triple sum",
    "sum_twice": "sum Twice",
}
MODES_NEEDING_C = ("add_difference", "triple_sum", "sum_twice")
RECIPE_TYPE = "alloy-merge"
RECIPE_VERSION = 1


def _squash(s: str) -> str:
    return "".join(ch for ch in str(s).lower() if ch.isalnum())


_MODE_ALIASES = {_squash(m): m for m in MODES}
_MODE_ALIASES.update({_squash(label): m for m, label in MODE_LABELS.items()})
_MODE_ALIASES.update({"weight": "weight_sum", "add": "add_difference", "adddiff": "add_difference",
                      "triple": "triple_sum", "twice": "sum_twice", "sumtwice": "sum_twice"})
_CALC_ALIASES = {_squash(c): c for c in CALCS}
_CALC_ALIASES.update({"smoothaddmt": "smoothAdd", "traindiff": "trainDifference"})


def normalize_mode(s: str) -> str:
    """Map a CLI or UI spelling ("Add difference", "add-difference", "add_difference") to its id."""
    mode = _MODE_ALIASES.get(_squash(s))
    if mode is None:
        raise AlloyError(f"Unknown merge mode '{s}'; choose one of: {', '.join(MODES)}.")
    return mode


def normalize_calc(s: str) -> str:
    """Map a calc-mode spelling to its id ("smoothAdd MT" is the same math as smoothAdd)."""
    calc = _CALC_ALIASES.get(_squash(s))
    if calc is None:
        raise AlloyError(f"Unknown calculation mode '{s}'; choose one of: {', '.join(CALCS)}.")
    return calc


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise AlloyError(f"{name} must be a number, not '{value}'.") from None
    if not math.isfinite(v):
        raise AlloyError(f"{name} must be a finite number, not {value}.")
    return v


@dataclass
class Recipe:
    """Everything that determines a merge's result. JSON-serialisable; see docs/DESIGN.md."""

    model_a: str
    model_b: str | None = None
    model_c: str | None = None
    mode: str = "weight_sum"
    calc: str = "normal"
    alpha: float = 0.5
    beta: float = 0.25
    gamma: float = 0.3
    alpha_blocks: str | None = None
    beta_blocks: str | None = None
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

    # ---- construction -------------------------------------------------------------------
    def __post_init__(self):
        from .methods import effective_mode  # calc modes that imply a merge mode (trainDifference → Add)

        self.calc = normalize_calc(self.calc)
        self.mode = effective_mode(self.calc, normalize_mode(self.mode))
        for name in ("model_b", "model_c", "alpha_blocks", "beta_blocks", "bake_vae"):
            v = getattr(self, name)
            if v is not None and str(v).strip() == "":
                setattr(self, name, None)
        for name in ("elemental", "include", "exclude", "adjust"):
            v = getattr(self, name)
            setattr(self, name, "" if v is None else str(v))

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if not isinstance(d, dict):
            raise AlloyError("A recipe must be a JSON object.")
        d = dict(d)
        d.pop("type", None)
        d.pop("version", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise AlloyError(f"Unknown recipe field(s): {', '.join(unknown)}.")
        if not d.get("model_a"):
            raise AlloyError("The recipe names no model A.")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise AlloyError(f"The recipe is not valid JSON ({e.msg} at line {e.lineno}).") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str) -> "Recipe":
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(f.read())
        except OSError as e:
            raise AlloyError(f"Cannot read recipe file {path}: {e.strerror}.") from None

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"type": RECIPE_TYPE, "version": RECIPE_VERSION}
        d.update(dataclasses.asdict(self))
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    # ---- identity -----------------------------------------------------------------------
    def identity(self) -> dict:
        """The fields that decide the merged tensors (not where the result goes).

        Models are identified by sha256 where known, else by path."""
        d = dataclasses.asdict(self)
        hashes = d.pop("hashes")
        for slot in ("a", "b", "c"):
            key = f"model_{slot}"
            if d[key] is not None and hashes.get(slot):
                d[key] = "sha256:" + hashes[slot]
        if self.mode == "weight_sum" and self.calc == "normal":
            d["model_c"] = None
        return d

    def short_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    # ---- validation (no file access) ------------------------------------------------------
    def validate(self) -> None:
        if self.mode not in MODES:
            raise AlloyError(f"Unknown merge mode '{self.mode}'.")
        if self.calc not in CALCS:
            raise AlloyError(f"Unknown calculation mode '{self.calc}'.")
        if self.dtype not in DTYPES:
            raise AlloyError(f"Unknown output precision '{self.dtype}'; choose one of: {', '.join(DTYPES)}.")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise AlloyError(f"Unknown compute precision '{self.compute_dtype}'; choose fp32 or fp64.")
        self.alpha = _finite("alpha", self.alpha)
        self.beta = _finite("beta", self.beta)
        self.gamma = _finite("gamma", self.gamma)
        try:
            self.seed = int(self.seed)
        except (TypeError, ValueError):
            raise AlloyError(f"seed must be an integer, not '{self.seed}'.") from None
        if not self.model_a:
            raise AlloyError("Model A is required.")
        if not self.model_b:
            raise AlloyError("Model B is required.")
        if self.include.strip() and self.exclude.strip():
            raise AlloyError("Use either include or exclude, not both.")

    # ---- naming ---------------------------------------------------------------------------
    def display_name(self) -> str:
        """SuperMerger-style merge name (§12.1), e.g. "A x (1-0.3) + B x 0.3"."""
        a, b, c = (_stem(self.model_a), _stem(self.model_b), _stem(self.model_c))
        al, be = _r3(self.alpha), _r3(self.beta)
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


def _stem(path: str | None) -> str:
    if not path:
        return "?"
    base = os.path.basename(str(path).split(" [")[0])
    for ext in (".safetensors", ".ckpt", ".pt", ".bin"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def _r3(x: float) -> str:
    v = round(float(x), 3)
    return str(int(v)) if v == int(v) else repr(v)
