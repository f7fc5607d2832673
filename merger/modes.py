"""Merge-mode and calculation-mode names: ids, UI labels, accepted spellings, forced modes.

Plain data and string functions only, so `merger.recipe` and `merger.methods` both import it
without importing each other."""
from __future__ import annotations

from types import MappingProxyType

from .errors import AlloyError
from .multimodes import MULTI_MODES

CLASSIC_MODES = ("weight_sum", "add_difference", "triple_sum", "sum_twice")
MODES = CLASSIC_MODES + tuple(MULTI_MODES)       # the multi-model modes: merger.multimodes
CALCS = ("normal", "cosineA", "cosineB", "trainDifference", "smoothAdd", "extract", "tensor", "tensor2", "self")
MODE_LABELS = {
    "weight_sum": "Weight sum",
    "add_difference": "Add difference",
    "triple_sum": "Triple sum",
    "sum_twice": "sum Twice",
    **{m.id: m.label for m in MULTI_MODES.values()},
}
MODES_NEEDING_C = ("add_difference", "triple_sum", "sum_twice")

# Calc modes that imply a merge mode (merger.methods documents why).
FORCED_MODE = MappingProxyType({
    "trainDifference": "add_difference",
    "extract": "add_difference",
    "self": "weight_sum",
})


def _squash(s: str) -> str:
    return "".join(ch for ch in str(s).lower() if ch.isalnum())


_MODE_ALIASES = {_squash(m): m for m in MODES}
_MODE_ALIASES.update({_squash(label): m for m, label in MODE_LABELS.items()})
_MODE_ALIASES.update({"weight": "weight_sum", "add": "add_difference", "adddiff": "add_difference",
                      "triple": "triple_sum", "twice": "sum_twice", "sumtwice": "sum_twice"})
_MODE_ALIASES.update({_squash(alias): m.id for m in MULTI_MODES.values() for alias in m.aliases})
_CALC_ALIASES = {_squash(c): c for c in CALCS}
_CALC_ALIASES.update({"smoothaddmt": "smoothAdd", "traindiff": "trainDifference"})


def normalize_mode(s: str) -> str:
    """Map a CLI or UI spelling ("Add difference", "add-difference", "add_difference") to its id."""
    mode = _MODE_ALIASES.get(_squash(s))
    if mode is None:
        raise AlloyError(f"Unknown merge mode {_quoted(s)}; choose one of: {', '.join(MODES)}.")
    return mode


def normalize_calc(s: str) -> str:
    """Map a calc-mode spelling to its id ("smoothAdd MT" is the same math as smoothAdd)."""
    calc = _CALC_ALIASES.get(_squash(s))
    if calc is None:
        raise AlloyError(f"Unknown calculation mode {_quoted(s)}; choose one of: {', '.join(CALCS)}.")
    return calc


def effective_mode(calc: str, requested_mode: str) -> str:
    """The mode the engine runs for `calc`: trainDifference/extract force add_difference, self
    forces weight_sum, other calcs keep the requested mode. A multi-model mode is never replaced
    (get_method refuses a calc other than normal with it)."""
    calc, mode = normalize_calc(calc), normalize_mode(requested_mode)
    return mode if mode in MULTI_MODES else FORCED_MODE.get(calc, mode)


def _quoted(s) -> str:
    text = str(s)
    return repr(text[:80]) if len(text) > 80 or not text.isprintable() else f"'{text}'"
