"""Random block weights (SuperMerger's "Let the Dice roll", spec §9).

A block list may hold tokens instead of numbers; each is drawn per position i of the list:

    R  → r                       (0 ≤ r < 1)
    U  → 1.5 − 2r
    X  → up_i + (low_i − up_i)·r  (uniform between the X limits)
    D  → up_i + low_i·(r − 0.5)   (centre up_i, width low_i)

then clamped into [min_i, max_i] (defaults 0 and 1, as in SuperMerger, for every token) and rounded
to `round` decimals (default 3). A lower limit written ``0.2R0.5`` means: with probability 0.5 use
0.2, otherwise the value is 0 (X) or the centre (D). A list that is one token (``R``) or
``ALL_R`` / ``ALL_U`` / ``ALL_X`` puts that token on every block (26 positions for SD1/SD2/SDXL,
which SDXL then converts to 20 like any 26-value list; 61 for Flux).

The uniforms r come from SuperMerger's generator: NumPy's legacy ``RandomState(seed)``, 3000 draws;
position i of the alpha list uses draw i, of the beta list draw 50 + i. So a SuperMerger seed gives
SuperMerger's numbers for SD1/SD2/SDXL lists. Differences, on purpose: the coin of a ``…R p``
limit uses seeded draws 2000 + i (alpha) / 2500 + i (beta) where SuperMerger used an unseeded
generator (its results were not reproducible); Flux beta lists (61 values) start at draw 61, not 50,
so alpha and beta draws do not overlap (SuperMerger's correlated-draws defect, §17.12).

`roll(recipe, arch)` returns the recipe with the drawn numbers in ``alpha_blocks`` / ``beta_blocks``
(so history, file metadata and `run` reproduce them exactly), the seed in ``seed`` (−1 becomes a
new random seed) and the token texts and limits in ``dice``.
"""
from __future__ import annotations

import re
import secrets

from .errors import AlloyError

TOKENS = ("R", "U", "X", "D")
ALL_TOKEN_PRESETS = {"ALL_R": "R", "ALL_U": "U", "ALL_X": "X"}
DRAWS = 3000
OFFSETS = {"alpha": 0, "beta": 50}
COIN_OFFSETS = {"alpha": 2000, "beta": 2500}
SEED_LIMIT = 4294967295                 # numpy RandomState seeds: 0 … 2**32 − 1
NEW_SEED_BELOW = 4294967294             # SuperMerger's range for a fresh seed
DEFAULT_LIMITS = {"upper": "1", "lower": "0", "max": "1", "min": "0", "round": 3}
_SPLIT = re.compile(r"[,\s]+")


def _tokens(text: str | None) -> list[str]:
    return [t for t in _SPLIT.split((text or "").strip()) if t]


def has_tokens(text: str | None) -> bool:
    """True when a block list holds a random token (or is ALL_R / ALL_U / ALL_X)."""
    toks = _tokens(text)
    return any(t.upper() in TOKENS for t in toks) or (len(toks) == 1 and toks[0].upper() in ALL_TOKEN_PRESETS)


def full_length(arch) -> int:
    """Positions a one-token list expands to: 26 for SD1/SD2/SDXL (SuperMerger's list), 61 for Flux."""
    return 61 if arch.name == "flux" else 26


def expand(text: str, arch) -> list[str]:
    """The list's entries, upper-cased tokens; one token (or ALL_x) repeated over `full_length(arch)`."""
    toks = _tokens(text)
    if len(toks) == 1:
        one = ALL_TOKEN_PRESETS.get(toks[0].upper(), toks[0].upper())
        if one in TOKENS:
            return [one] * full_length(arch)
    return [t.upper() if t.upper() in TOKENS else t for t in toks]


def uniforms(seed: int):
    """SuperMerger's draws: ``np.random.seed(seed); np.random.rand(3000)`` (legacy MT19937), as
    NumPy float64 values (SuperMerger's arithmetic and rounding happen on those)."""
    import numpy as np
    return np.random.RandomState(seed).random_sample(DRAWS)


def _per_position(text, n: int, what: str) -> list[str]:
    vals = _tokens(str(text))
    if len(vals) == 1:
        return vals * n
    if len(vals) != n:
        raise AlloyError(f"The random {what} limits have {len(vals)} values; the block list has {n} "
                         f"(give one value for all blocks or one per block).")
    return vals


def _limits(limits: dict | None, n: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """(upper, lower, max, min) per position of an n-entry list."""
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    return tuple(_per_position(lim[k], n, k) for k in ("upper", "lower", "max", "min"))


def _number(text: str, what: str) -> float:
    from .parsing import finite_float
    return finite_float(text, what)


def _round(value, digits: int) -> float:
    """SuperMerger rounds drawn values (NumPy floats) with NumPy's round, and a value that a clamp
    limit replaced (a Python float) with Python's."""
    if type(value) is float:
        return round(value, digits)
    import numpy as np
    return float(np.round(value, digits))


def draw_list(text: str, arch, seed: int, which: str, limits: dict | None = None) -> list[str]:
    """The list with every token replaced by its drawn number (text entries, like SuperMerger's)."""
    entries = expand(text, arch)
    n = len(entries)
    up, low, top, bottom = _limits(limits, n)
    digits = int({**DEFAULT_LIMITS, **(limits or {})}["round"])
    r = uniforms(seed)
    add = OFFSETS[which] if n <= OFFSETS["beta"] or which == "alpha" else n
    out = []
    for i, tok in enumerate(entries):
        if tok not in TOKENS:
            out.append(tok)
            continue
        u = r[i + add]
        lo, hi = low[i], up[i]
        if "R" in lo.upper() and tok in ("X", "D"):
            base, p = re.split("[Rr]", lo, maxsplit=1)
            keep = r[COIN_OFFSETS[which] + i] <= _number(p, f"probability in lower limit '{lo}'")
            lo, hi = (base, hi) if keep else ("0", "0" if tok == "X" else hi)
        if tok == "R":
            v = u
        elif tok == "U":
            v = -2 * u + 1.5
        elif tok == "X":
            v = (_number(lo, "lower limit") - _number(hi, "upper limit")) * u + _number(hi, "upper limit")
        else:
            v = _number(hi, "upper limit") + _number(lo, "lower limit") * (u - 0.5)
        v = min(v, _number(top[i], "max limit"))
        v = max(v, _number(bottom[i], "min limit"))
        out.append(repr(_round(v, digits)))
    return out


def new_seed() -> int:
    return secrets.randbelow(NEW_SEED_BELOW)


def check_seed(seed) -> int:
    try:
        s = int(seed)
    except (TypeError, ValueError):
        raise AlloyError(f"The random seed must be an integer, not '{seed}'.") from None
    if s == -1:
        return s
    if not 0 <= s <= SEED_LIMIT:
        raise AlloyError(f"The random seed must be between 0 and {SEED_LIMIT} (or -1 for a new one), not {s}.")
    return s


def uses_seed(recipe) -> bool:
    """Whether the merge mode itself draws from the seed (DARE's masks)."""
    from .multimodes import multi_mode
    spec = multi_mode(recipe.mode)
    return spec is not None and "seed" in spec.uses


def wanted(recipe) -> bool:
    return has_tokens(recipe.alpha_blocks) or has_tokens(recipe.beta_blocks)


def roll(recipe, arch):
    """The recipe with its random tokens drawn (unchanged when it has none); see the module doc.
    A seed of −1 for a mode whose result depends on the seed (DARE's masks) becomes a new one too."""
    if not wanted(recipe):
        if uses_seed(recipe) and int(recipe.seed) == -1:
            return recipe.replace(seed=new_seed())
        return recipe
    seed = check_seed(recipe.seed)
    seed = new_seed() if seed == -1 else seed
    limits = {k: (recipe.dice or {}).get(k, v) for k, v in DEFAULT_LIMITS.items()}
    try:
        limits["round"] = int(limits["round"])
    except (TypeError, ValueError):
        raise AlloyError(f"The random round setting must be an integer, not '{limits['round']}'.") from None
    record = {"seed": seed, "alpha": None, "beta": None, **limits}
    changes = {"seed": seed}
    for which in ("alpha", "beta"):
        text = getattr(recipe, f"{which}_blocks")
        if has_tokens(text):
            record[which] = text
            changes[f"{which}_blocks"] = ",".join(draw_list(text, arch, seed, which, limits))
    return recipe.replace(dice=record, **changes)


def roll_for_sources(recipe, sources: dict):
    """`roll` with the architecture detected from model A's header (only when there are tokens)."""
    if not wanted(recipe):
        return roll(recipe, None)
    from .arch import detect
    from .plan import source_label
    src = sources["a"]
    return roll(recipe, detect(src.keys(), label=source_label(src)))


def token_ranges(text: str, arch, limits: dict | None = None) -> tuple[list, list]:
    """For the editor's curve: (values, ranges) per position; a token has value None and its range
    (lo, hi) after clamping, a number has its value and range None."""
    entries = expand(text, arch)
    up, low, top, bottom = _limits(limits, len(entries))
    values, ranges = [], []
    for i, tok in enumerate(entries):
        if tok not in TOKENS:
            values.append(_number(tok, f"block list value {i + 1}"))
            ranges.append(None)
            continue
        hi_v = _number(up[i], "upper limit")
        lo_v = _number(re.split("[Rr]", low[i])[0], "lower limit")
        span = {"R": (0.0, 1.0), "U": (-0.5, 1.5), "X": (min(lo_v, hi_v), max(lo_v, hi_v)),
                "D": (hi_v - abs(lo_v) / 2, hi_v + abs(lo_v) / 2)}[tok]
        cmax, cmin = _number(top[i], "max limit"), _number(bottom[i], "min limit")
        values.append(None)
        ranges.append((min(max(span[0], cmin), cmax), max(min(span[1], cmax), cmin)))
    return values, ranges
