"""One typed validator for every JSON-like dict that comes from outside: REST request bodies,
recipe files, history lines, PNG info and checkpoint metadata.

A schema is data: {field: Spec}. `check_object(d, schema, where)` checks each field's type and
range and returns the cleaned values; the first problem is one AlloyError sentence naming the
field ("The recipe field 'alpha' must be a number from -100 to 100, not a list."). Booleans are
real JSON booleans, numbers are finite and bounded (JSON's 1e999 arrives as infinity), strings
are strings of bounded length. Plain Python over dicts, so it works under pydantic 1 and 2 alike."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import AlloyError

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HEX = re.compile(r"^[0-9a-f]{10,64}$")
MISSING = object()


def describe(v: Any) -> str:
    """A short, safe description of a JSON value for an error sentence."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "NaN" if math.isnan(v) else ("infinity" if v > 0 else "minus infinity")
        text = repr(v)
        return text if len(text) <= 24 else f"a {len(str(abs(v)))}-digit number"
    if isinstance(v, str):
        text = v if len(v) <= 40 else v[:37] + "..."
        return f"the string {text!r}"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return f"a {type(v).__name__}"


class Spec:
    """One field's rule. `check(value, label)` returns the cleaned value or raises AlloyError."""

    optional = False
    default: Any = None

    def fail(self, label: str, must: str, v: Any) -> AlloyError:
        return AlloyError(f"{label} must be {must}, not {describe(v)}.")

    def check(self, v: Any, label: str) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Spec):
    """An int or float (not a boolean), finite, lo <= v <= hi; `integer` also refuses 1.5."""

    lo: float
    hi: float
    integer: bool = False
    optional: bool = False
    default: Any = None

    def must(self) -> str:
        kind = "an integer" if self.integer else "a number"
        return f"{kind} from {_num(self.lo)} to {_num(self.hi)}"

    def check(self, v, label):
        if v is None and self.optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(label, self.must(), v)
        if isinstance(v, float) and not math.isfinite(v):
            raise self.fail(label, f"a finite number ({self.must()})", v)
        if self.integer and isinstance(v, float) and not v.is_integer():
            raise self.fail(label, self.must(), v)
        if not self.lo <= v <= self.hi:
            raise self.fail(label, self.must(), v)
        return int(v) if self.integer else float(v)


@dataclass(frozen=True)
class Text(Spec):
    """A string of at most `max_len` characters, never holding NUL; `line` also refuses control
    characters (names, choices); `choices` restricts the value; `nonempty` refuses blank text."""

    max_len: int = 4096
    optional: bool = False
    choices: tuple = ()
    line: bool = True
    nonempty: bool = False
    default: Any = None

    def check(self, v, label):
        if v is None and self.optional:
            return None
        if not isinstance(v, str):
            raise self.fail(label, "one of " + _choices(self.choices) if self.choices else "a string", v)
        if len(v) > self.max_len:
            raise AlloyError(f"{label} is too long ({len(v)} characters; at most {self.max_len}).")
        if "\x00" in v or (self.line and _CONTROL.search(v)):
            raise AlloyError(f"{label} contains a control character ({describe(v)}).")
        if self.choices and v not in self.choices:
            raise self.fail(label, "one of " + _choices(self.choices), v)
        if self.nonempty and not v.strip():
            raise AlloyError(f"{label} is empty.")
        return v


@dataclass(frozen=True)
class Flag(Spec):
    """A JSON boolean: true or false (the string "false" is refused, not read as true)."""

    optional: bool = False
    default: Any = False

    def check(self, v, label):
        if v is None and self.optional:
            return None
        if not isinstance(v, bool):
            raise self.fail(label, "true or false", v)
        return v


@dataclass(frozen=True)
class Hashes(Spec):
    """{slot: sha256 hex} with slots from `slots`; full (64) or short (10+) lowercase hex; empty
    values are dropped."""

    slots: tuple = ("a", "b", "c", "vae")
    optional: bool = True
    default: Any = None

    def check(self, v, label):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.fail(label, "an object of sha256 hashes", v)
        out = {}
        for slot, h in v.items():
            if slot not in self.slots:
                raise AlloyError(f"{label} has an unknown slot {describe(slot)} (known: {', '.join(self.slots)}).")
            if h in (None, ""):
                continue
            if not isinstance(h, str) or not _HEX.match(h):
                raise self.fail(f"{label} entry '{slot}'", "a sha256 in lowercase hex", h)
            out[slot] = h
        return out


@dataclass(frozen=True)
class ListOf(Spec):
    """A list of 1..max_len items, each checked by `item`."""

    item: Spec
    max_len: int = 64
    optional: bool = False
    default: Any = None

    def check(self, v, label):
        if v is None and self.optional:
            return None
        if not isinstance(v, list) or not v:
            raise self.fail(label, "a non-empty list", v)
        if len(v) > self.max_len:
            raise AlloyError(f"{label} has {len(v)} entries; at most {self.max_len} are allowed.")
        return [self.item.check(x, f"{label} entry {i + 1}") for i, x in enumerate(v)]


@dataclass(frozen=True)
class Custom(Spec):
    """A rule written as a function `fn(value, label) -> cleaned` (it raises AlloyError)."""

    fn: Callable[[Any, str], Any]
    optional: bool = False
    default: Any = None

    def check(self, v, label):
        if v is None and self.optional:
            return None
        return self.fn(v, label)


def check_object(d: Any, schema: dict[str, Spec], where: str, *, required: tuple = (),
                 defaults: bool = True) -> dict:
    """Check every field of `d` against `schema`; unknown fields and missing `required` ones are
    refused. Absent fields get their Spec's default when `defaults`, else are left out."""
    if not isinstance(d, dict):
        raise AlloyError(f"{where} must be a JSON object, not {describe(d)}.")
    unknown = [k for k in d if k not in schema]
    if unknown:
        names = ", ".join(describe(k)[len("the string "):] if isinstance(k, str) else describe(k)
                          for k in unknown[:5])
        raise AlloyError(f"{where} has unknown field(s): {names}{' …' if len(unknown) > 5 else ''}.")
    for name in required:
        if d.get(name) is None:
            raise AlloyError(f"{where} needs '{name}'.")
    out = {}
    for name, spec in schema.items():
        v = d.get(name, MISSING)
        if v is MISSING:
            if defaults:
                out[name] = spec.default
            continue
        out[name] = spec.check(v, f"{where} field '{name}'")
    return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _choices(choices) -> str:
    return ", ".join(f'"{c}"' for c in choices)
