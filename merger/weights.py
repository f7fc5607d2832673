"""Block-weight lists, include/exclude selections and per-key ratio resolution (spec §2, §5.2, §5.4, §7).

Ratio of a key (``RatioResolver.ratios``), in order:
  1. block None (never merged)                         → None (A kept)
  2. include: key not selected / exclude: key selected → None (A kept)
  3. α = base α; with an α block list, α = list[index(block)] — for the base block (BASE / Flux CLIP)
     that is the list's first value, which replaces the α slider entirely (§5.2). β likewise.
  4. elemental rules replace α (last match wins, §6).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .adjust import parse_adjust, validate_adjust
from .arch import Arch, sdxl_26_to_20
from .elemental import Elemental, expand_blocks, parse_elemental
from .errors import AlloyError
from .parsing import finite_float
from .presets import Presets

_SEP = re.compile(r"[\s,]+")
_LOOKS_LIKE_BLOCK = re.compile(r"^(BASE|CLIP|T5|M\d\d|IN\d\d|OUT\d\d|D\d\d|S\d\d)$")


def _accepted_lengths(arch: Arch) -> tuple[int, ...]:
    return (20, 26) if arch.name == "sdxl" else (len(arch.block_ids),)


def parse_block_list(text: str | None, arch: Arch, presets: Presets | None = None,
                     what: str = "alpha") -> list[float] | None:
    """Comma list (spaces/newlines tolerated) or preset name → ``len(arch.block_ids)`` floats; blank → None.

    SDXL also accepts 26 values (converted with ``sdxl_26_to_20``)."""
    s = (text or "").strip()
    if not s:
        return None
    presets = presets or Presets()
    if "," not in s and presets.is_preset(s):
        return presets.get(s, arch)
    tokens = [t for t in re.split(r"[,\s]+", s) if t]
    if len(tokens) == 1:
        try:
            float(tokens[0])
        except ValueError:
            presets.raw(s)            # raises "Unknown block-weight preset …" with close matches
    values = [finite_float(tok, f"{what} block list value {pos}") for pos, tok in enumerate(tokens, start=1)]
    lengths = _accepted_lengths(arch)
    if len(values) not in lengths:
        need = " (or 26)" if arch.name == "sdxl" else ""
        raise AlloyError(f"{what} block list has {len(values)} values; {arch.label} needs "
                         f"{len(arch.block_ids)}{need} ({', '.join((arch.block_ids[0], arch.block_ids[1]))} … "
                         f"{arch.block_ids[-1]}).")
    if len(values) != len(arch.block_ids):
        values = sdxl_26_to_20(values)
    return values


def format_block_list(values: list[float]) -> str:
    """Inverse of ``parse_block_list`` for numbers: ``repr`` floats joined by commas."""
    return ",".join(repr(float(v)) for v in values)


@dataclass(frozen=True)
class Selection:
    """Include/exclude matcher (§7): block IDs, key substrings, ``VAE`` and ``ADJUST``."""

    arch: Arch
    blocks: frozenset[str] = frozenset()
    substrings: tuple[str, ...] = ()
    vae: bool = False
    adjust: bool = False

    def __bool__(self) -> bool:
        return bool(self.blocks or self.substrings or self.vae or self.adjust)

    def matches(self, key: str, block: str | None) -> bool:
        return ((block is not None and block in self.blocks)
                or any(s in key for s in self.substrings)
                or (self.vae and self.arch.is_vae(key))
                or (self.adjust and self.arch.adjust_role(key) is not None))

    def describe(self) -> str:
        parts = [b for b in self.arch.block_ids if b in self.blocks]
        parts += ["VAE"] * self.vae + ["ADJUST"] * self.adjust + list(self.substrings)
        return " ".join(parts)


def parse_selection(text: str | None, arch: Arch, what: str = "include/exclude") -> Selection:
    """Tokens separated by spaces or commas: block IDs / ranges (``IN04-IN08``, upper case as in the block
    lists), ``VAE`` and ``ADJUST`` (any case); anything else is a key substring (case-sensitive).
    Upper-case block-like tokens this family lacks (``IN10`` on SDXL) are an error."""
    blocks: list[str] = []
    subs: list[str] = []
    vae = adjust = False
    for tok in (t for t in _SEP.split(text or "") if t):
        ends = tok.split("-")
        if tok.upper() == "VAE":
            vae = True
        elif tok.upper() == "ADJUST":
            adjust = True
        elif len(ends) <= 2 and all(e in arch.block_ids for e in ends):
            blocks.extend(expand_blocks([tok], arch, f"{what} '{tok}'"))
        elif any(_LOOKS_LIKE_BLOCK.match(e) for e in ends):
            expand_blocks([tok], arch, f"{what} '{tok}'")      # raises: names a block this family lacks
            raise AlloyError(f"{what} '{tok}' is not a block ID or a range like IN04-IN08.")
        else:
            subs.append(tok)
    return Selection(arch, frozenset(blocks), tuple(dict.fromkeys(subs)), vae, adjust)


@dataclass
class RatioResolver:
    """Per-key (α, β) for one merge; every parse error is raised by the constructor."""

    recipe: object
    arch: Arch
    presets: Presets | None = None
    alpha_list: list[float] | None = field(init=False)
    beta_list: list[float] | None = field(init=False)
    elemental: Elemental = field(init=False)
    selection: Selection = field(init=False)
    include: bool = field(init=False)
    adjust: tuple[float, ...] | None = field(init=False)

    def __post_init__(self):
        r, arch = self.recipe, self.arch
        presets = self.presets or Presets()
        self.alpha_list = parse_block_list(r.alpha_blocks, arch, presets, "alpha")
        self.beta_list = parse_block_list(r.beta_blocks, arch, presets, "beta")
        self.elemental = parse_elemental(r.elemental, arch)
        inc, exc = (r.include or "").strip(), (r.exclude or "").strip()
        if inc and exc:
            raise AlloyError("Use either include or exclude, not both.")
        self.include = bool(inc)
        self.selection = parse_selection(inc or exc, arch, "include" if inc else "exclude")
        self.adjust = parse_adjust(r.adjust)
        validate_adjust(self.adjust, arch)
        self._alpha = float(r.alpha)
        self._beta = float(r.beta)

    def selected(self, key: str, block: str | None) -> bool:
        """False when include/exclude keeps A for this key."""
        if not self.selection:
            return True
        return self.selection.matches(key, block) == self.include

    def ratios_for_block(self, block: str) -> tuple[float, float]:
        """(α, β) of a block before elemental rules and include/exclude."""
        i = self.arch.block_index(block)
        a = self.alpha_list[i] if self.alpha_list is not None else self._alpha
        b = self.beta_list[i] if self.beta_list is not None else self._beta
        return a, b

    def ratios(self, key: str, block: str | None) -> tuple[float, float] | None:
        """(α, β) for ``key`` in ``block``; None = keep A (never merged, or excluded)."""
        if block is None or not self.selected(key, block):
            return None
        a, b = self.ratios_for_block(block)
        if self.elemental:
            a = self.elemental.apply(key, block, a)
        return a, b

    def describe(self) -> dict:
        """Summary for logs: effective per-block lists (blocks wholly excluded shown as 0, §7)."""
        def eff(values: list[float] | None) -> list[float] | None:
            if values is None:
                return None
            return [0.0 if self._block_excluded(b) else v for b, v in zip(self.arch.block_ids, values)]
        return {
            "arch": self.arch.name, "alpha": self._alpha, "beta": self._beta,
            "alpha_blocks": eff(self.alpha_list), "beta_blocks": eff(self.beta_list),
            "elemental": [rule.text for rule in self.elemental.rules],
            "elemental_ignored": list(self.elemental.ignored),
            ("include" if self.include else "exclude"): self.selection.describe(),
            "adjust": list(self.adjust) if self.adjust else None,
        }

    def _block_excluded(self, block: str) -> bool:
        if not self.selection:
            return False
        in_sel = block in self.selection.blocks
        return (not in_sel and self.include and not self.selection.substrings
                and not self.selection.vae and not self.selection.adjust) or (in_sel and not self.include)
