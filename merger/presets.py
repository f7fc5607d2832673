"""Block-weight presets (spec §5.5): the built-in 26-value table, generated from formulas, plus user files.

Built-ins are SD 26-lists (BASE, IN00…IN11, M00, OUT00…OUT11). The 25 UNet blocks are indexed
i = 0…24 (IN00 … OUT11) with t = i / 24; BASE is 0 except for ALL_B. Curves used:

  s(t)    = 3t² − 2t³                               (smoothstep)
  tri(x)  = x mod 2, folded: tri(x) = 2 − (x mod 2) when (x mod 2) > 1   (triangle wave, period 2)
  SMOOTHSTEP*k = tri(k·s(t))        SMOOTHSTEP/k = s(tri(k·t))       R_… = 1 − that
  COSINE  = (1 + cos πt) / 2
  H(t; p0, p1, m0, m1) = (2t³−3t²+1)p0 + (t³−2t²+t)m0 + (−2t³+3t²)p1 + (t³−t²)m1   (cubic Hermite)
  FAKE_CUBIC_HERMITE = H(t; 0, 1, 25/6, 25/6)
  TRUE_CUBIC_HERMITE = H(t; 1/24, 1, 25/6, 25/6) for t > 0, and 0 at IN00

Rounding follows SuperMerger's ``mbwpresets_master.txt``: GRAD_* to 10 decimals, the rest to 15
significant digits; every value of that table is reproduced to within 1e-15.

User files: one preset per line, ``NAME<TAB>v0,v1,…`` or ``NAME:v0,v1,…``; blank lines, ``#`` comments
and SuperMerger's ``preset_name<TAB>preset_weights`` header are ignored. Lines of a length no family
uses (e.g. SuperMerger's 110-value extended SDXL lists) or with random tokens (R/U/X) are skipped and
listed in ``Presets.skipped``; anything else malformed is an AlloyError naming the file and line.
"""
from __future__ import annotations

import difflib
import math
from types import MappingProxyType
from typing import Callable, Mapping

from .arch import Arch, sdxl_26_to_20
from .errors import AlloyError
from .parsing import finite_float

_N = 25                      # UNet blocks in the SD 26-list
_SD_IDS = tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(12))
LENGTH_FAMILIES = {26: ("sd1", "sd2", "sdxl"), 20: ("sdxl",), 61: ("flux",)}


def smoothstep(t: float) -> float:
    """s(t) = 3t² − 2t³."""
    return 3 * t * t - 2 * t * t * t


def tri(x: float) -> float:
    """Triangle wave of period 2: 0 at even integers, 1 at odd integers, linear between."""
    r = math.fmod(x, 2.0)
    return 2.0 - r if r > 1.0 else r


def hermite(t: float, p0: float, p1: float, m0: float, m1: float) -> float:
    """Cubic Hermite segment on [0, 1] from p0 (slope m0) to p1 (slope m1)."""
    t2, t3 = t * t, t * t * t
    return (2 * t3 - 3 * t2 + 1) * p0 + (t3 - 2 * t2 + t) * m0 + (-2 * t3 + 3 * t2) * p1 + (t3 - t2) * m1


def _curve(f: Callable[[float], float], digits: int | None = None) -> tuple[float, ...]:
    vals = [f(i / (_N - 1)) for i in range(_N)]
    rounded = [round(v, digits) if digits is not None else float(f"{v:.15g}") for v in vals]
    return (0.0,) + tuple(v + 0.0 for v in rounded)


def _reverse(values: tuple[float, ...]) -> tuple[float, ...]:
    return (values[0],) + tuple(float(f"{1.0 - v:.15g}") for v in values[1:])


def _bands(*spans: tuple[str, str, float]) -> tuple[float, ...]:
    """0 everywhere except the inclusive ranges ``(first, last, value)`` of UNet blocks."""
    vals = [0.0] * _N
    for first, last, value in spans:
        for i in range(_SD_IDS.index(first), _SD_IDS.index(last) + 1):
            vals[i] = value
    return (0.0,) + tuple(vals)


def _grad_v(t: float) -> float:
    """1 → 0 over IN00…M00, then back up to 1 over OUT00…OUT11: |1 − 2t|."""
    return abs(1.0 - 2.0 * t)


def _build() -> Mapping[str, tuple[float, ...]]:
    p: dict[str, tuple[float, ...]] = {}
    p["GRAD_V"] = _curve(_grad_v, 10)
    p["GRAD_A"] = _reverse(p["GRAD_V"])
    p["FLAT_25"] = _bands(("IN00", "OUT11", 0.25))
    p["FLAT_75"] = _bands(("IN00", "OUT11", 0.75))
    for name, last_in, first_out in (("WRAP08", "IN03", "OUT08"), ("WRAP12", "IN05", "OUT06"),
                                     ("WRAP14", "IN06", "OUT05"), ("WRAP16", "IN07", "OUT04")):
        p[name] = _bands(("IN00", last_in, 1.0), (first_out, "OUT11", 1.0))
    p["MID12_50"] = _bands(("IN05", "OUT05", 0.5))
    p["OUT07"] = _bands(("OUT05", "OUT11", 1.0))
    p["OUT12"] = _bands(("OUT00", "OUT11", 1.0))
    p["OUT12_5"] = _bands(("M00", "M00", 0.5), ("OUT00", "OUT11", 1.0))
    p["RING08_SOFT"] = _bands(("IN05", "IN05", 0.5), ("IN06", "IN08", 1.0), ("IN09", "IN09", 0.5),
                              ("OUT02", "OUT02", 0.5), ("OUT03", "OUT05", 1.0), ("OUT06", "OUT06", 0.5))
    p["RING08_5"] = _bands(("IN06", "IN09", 1.0), ("OUT02", "OUT05", 1.0))
    p["RING10_5"] = _bands(("IN05", "IN09", 1.0), ("OUT02", "OUT06", 1.0))
    p["RING10_3"] = _bands(("IN06", "IN10", 1.0), ("OUT01", "OUT05", 1.0))
    p["SMOOTHSTEP"] = _curve(smoothstep)
    p["REVERSE-SMOOTHSTEP"] = _reverse(p["SMOOTHSTEP"])
    for k in (2, 3, 4):
        p[f"SMOOTHSTEP*{k}"] = _curve(lambda t, k=k: tri(k * smoothstep(t)))
        p[f"R_SMOOTHSTEP*{k}"] = _reverse(p[f"SMOOTHSTEP*{k}"])
    for k in (2, 3, 4):
        p[f"SMOOTHSTEP/{k}"] = _curve(lambda t, k=k: smoothstep(tri(k * t)))
        p[f"R_SMOOTHSTEP/{k}"] = _reverse(p[f"SMOOTHSTEP/{k}"])
    p["COSINE"] = _curve(lambda t: (1 + math.cos(math.pi * t)) / 2)
    p["REVERSE_COSINE"] = _reverse(p["COSINE"])
    p["TRUE_CUBIC_HERMITE"] = _curve(lambda t: hermite(t, 1 / 24, 1, 25 / 6, 25 / 6) if t > 0 else 0.0)
    p["TRUE_REVERSE_CUBIC_HERMITE"] = _reverse(p["TRUE_CUBIC_HERMITE"])
    p["FAKE_CUBIC_HERMITE"] = _curve(lambda t: hermite(t, 0, 1, 25 / 6, 25 / 6))
    p["FAKE_REVERSE_CUBIC_HERMITE"] = _reverse(p["FAKE_CUBIC_HERMITE"])
    p["ALL_A"] = (0.0,) * 26
    p["ALL_B"] = (1.0,) * 26
    return MappingProxyType(p)


BUILTIN: Mapping[str, tuple[float, ...]] = _build()
_HEADER = "preset_name"
_RANDOM_TOKENS = ("R", "U", "X")


def _parse_line(line: str, path: str, lineno: int) -> tuple[str, str] | None:
    """(name, values text) of one preset line, or None for blanks, comments and the header."""
    s = line.rstrip()
    if not s.strip() or s.lstrip().startswith("#"):
        return None
    sep = "\t" if "\t" in s else ":"
    if sep not in s:
        raise AlloyError(f"{path} line {lineno}: expected 'NAME<TAB>values' or 'NAME:values'.")
    name, values = (part.strip() for part in s.split(sep, 1))
    if name == _HEADER:
        return None
    if not name or "," in name:
        raise AlloyError(f"{path} line {lineno}: the preset has no valid name.")
    return name, values


def _parse_values(text: str, path: str, lineno: int, name: str) -> tuple[float, ...] | str:
    """Float tuple, or a reason string when the line is valid SuperMerger syntax we do not support."""
    vals: list[float] = []
    for pos, tok in enumerate((t.strip() for t in text.split(",")), start=1):
        if tok.upper() in _RANDOM_TOKENS or tok[:2].upper() in ("R(", "U(", "X("):
            return "random values (R/U/X) are not supported"
        vals.append(finite_float(tok, f"{path} line {lineno}: preset {name} value {pos}"))
    if len(vals) not in LENGTH_FAMILIES:
        return f"{len(vals)} values (20, 26 or 61 are usable)"
    return tuple(vals)


class Presets:
    """Built-in presets plus, optionally, a user file (whose entries override built-ins of the same name)."""

    def __init__(self, user_file: str | None = None):
        table = dict(BUILTIN)
        skipped: list[str] = []
        if user_file:
            try:
                with open(user_file, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except OSError as e:
                raise AlloyError(f"Cannot read preset file {user_file}: {e.strerror}.") from None
            for lineno, line in enumerate(lines, start=1):
                parsed = _parse_line(line, user_file, lineno)
                if parsed is None:
                    continue
                name, text = parsed
                vals = _parse_values(text, user_file, lineno, name)
                if isinstance(vals, str):
                    skipped.append(f"{user_file} line {lineno} ({name}): {vals}")
                else:
                    table[name] = vals
        self._table: Mapping[str, tuple[float, ...]] = MappingProxyType(table)
        self.skipped: tuple[str, ...] = tuple(skipped)

    def _usable(self, values: tuple[float, ...], arch: Arch | None) -> bool:
        return arch is None or arch.name in LENGTH_FAMILIES[len(values)]

    def names(self, arch: Arch | None = None) -> list[str]:
        """Preset names usable on ``arch`` (all names when None), in table order."""
        return [n for n, v in self._table.items() if self._usable(v, arch)]

    def lookup(self, text: str) -> str | None:
        """The preset name ``text`` refers to (exact, else unique case-insensitive match), or None."""
        s = str(text).strip()
        if s in self._table:
            return s
        folded = [n for n in self._table if n.lower() == s.lower()]
        return folded[0] if len(folded) == 1 else None

    def is_preset(self, text: str) -> bool:
        return self.lookup(text) is not None

    def raw(self, name: str) -> tuple[float, ...]:
        """The stored values (any length) of preset ``name``."""
        found = self.lookup(name)
        if found is None:
            close = difflib.get_close_matches(str(name).strip().upper(), [n.upper() for n in self._table], n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise AlloyError(f"Unknown block-weight preset '{name}'.{hint}")
        return self._table[found]

    def get(self, name: str, arch: Arch) -> list[float]:
        """Values of preset ``name`` for ``arch`` (length ``len(arch.block_ids)``; 26 → 20 on SDXL)."""
        vals = self.raw(name)
        if len(vals) == len(arch.block_ids):
            return list(vals)
        if arch.name == "sdxl" and len(vals) == 26:
            return sdxl_26_to_20(list(vals))
        raise AlloyError(f"Preset '{name}' has {len(vals)} values and cannot be used on {arch.label} "
                         f"({len(arch.block_ids)} blocks).")
