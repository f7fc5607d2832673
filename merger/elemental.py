"""Elemental merge rules (spec §6): per-tensor α overrides inside blocks.

Text: entries ``Blocks:Elements:Ratio`` separated by commas or newlines.
  Blocks   — space-separated block IDs of the model's own list (SDXL: its 20-list names, which fixes
             SuperMerger's shifted-name defect §17.4), ranges ``IN04-IN08`` in either direction; a leading
             ``NOT`` inverts; empty (or a lone ``NOT``) = every block.
  Elements — space-separated substrings of the full key; a leading ``NOT`` inverts; empty = every key.
  Ratio    — a finite float (SuperMerger's random R/U/X ratios are not supported).
A key's α is replaced by the ratio of the **last** entry that matches it (only α, never β).

Entries without exactly two colons are ignored as SuperMerger does (``Elemental.ignored`` lists them);
``strict=True`` makes them an error. Unknown block IDs are always an error (SuperMerger matched block
tokens as substrings, so a typo silently matched nothing or several blocks); elements are matched against
the key only, not against "key + block name" as SuperMerger did.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .arch import Arch
from .errors import AlloyError
from .parsing import finite_float

_SPLIT = re.compile(r"[,\n]")
_RANDOM = re.compile(r"^[RUX](\(.*)?$", re.IGNORECASE)


def expand_blocks(tokens: list[str], arch: Arch, where: str) -> list[str]:
    """Block IDs named by ``tokens`` (IDs and ``A-B`` ranges, case-insensitive) in ``arch.block_ids``."""
    out: list[str] = []
    for tok in tokens:
        ends = [t.strip().upper() for t in tok.split("-")] if "-" in tok else [tok.upper()]
        if len(ends) > 2 or not all(ends):
            raise AlloyError(f"{where}: '{tok}' is not a block ID or a range like IN04-IN08.")
        for end in ends:
            if end not in arch.block_ids:
                raise AlloyError(f"{where}: {arch.label} has no block '{end}' "
                                 f"(blocks: {arch.block_ids[0]}, {arch.block_ids[1]} … {arch.block_ids[-1]}).")
        idx = [arch.block_ids.index(e) for e in ends]
        out.extend(arch.block_ids[min(idx):max(idx) + 1])
    return out


def _negated(tokens: list[str]) -> tuple[bool, list[str]]:
    return (True, tokens[1:]) if tokens and tokens[0] == "NOT" else (False, tokens)


def parse_ratio(text: str, where: str) -> float:
    """A finite float; AlloyError (mentioning random tokens when relevant) otherwise."""
    s = text.strip()
    if _RANDOM.match(s):
        raise AlloyError(f"{where}: random ratios (R/U/X) are not supported; give a number.")
    return finite_float(s, f"{where}: ratio")


@dataclass(frozen=True)
class ElementalRule:
    """One ``Blocks:Elements:Ratio`` entry. Empty ``blocks``/``elements`` = all."""

    text: str
    blocks: frozenset[str]
    blocks_not: bool
    elements: tuple[str, ...]
    elements_not: bool
    ratio: float

    def matches(self, key: str, block: str) -> bool:
        """(block ∈ blocks) xor NOT, then (any element ⊂ key) xor NOT; an empty list matches everything."""
        if self.blocks and (block in self.blocks) == self.blocks_not:
            return False
        if self.elements and any(e in key for e in self.elements) == self.elements_not:
            return False
        return True


@dataclass(frozen=True)
class Elemental:
    rules: tuple[ElementalRule, ...] = ()
    ignored: tuple[str, ...] = ()      # entries skipped for not having exactly two colons

    def __bool__(self) -> bool:
        return bool(self.rules)

    def rule_for(self, key: str, block: str) -> ElementalRule | None:
        """The last rule matching (key, block), or None."""
        for rule in reversed(self.rules):
            if rule.matches(key, block):
                return rule
        return None

    def apply(self, key: str, block: str, alpha: float) -> float:
        """α after the overrides: the last matching rule's ratio, else ``alpha`` unchanged."""
        rule = self.rule_for(key, block)
        return alpha if rule is None else rule.ratio


def parse_rule(entry: str, arch: Arch) -> ElementalRule:
    """One entry with exactly two colons → ElementalRule (AlloyError on bad blocks or ratio)."""
    where = f"elemental rule '{entry}'"
    blocks_s, elements_s, ratio_s = entry.split(":")
    blocks_not, block_toks = _negated(blocks_s.split())
    elements_not, elements = _negated(elements_s.split())
    blocks = frozenset(expand_blocks(block_toks, arch, where))
    return ElementalRule(entry, blocks, blocks_not and bool(blocks), tuple(elements),
                         elements_not and bool(elements), parse_ratio(ratio_s, where))


def parse_elemental(text: str | None, arch: Arch, strict: bool = False) -> Elemental:
    """Parse the elemental text box for ``arch`` (see the module docstring)."""
    rules: list[ElementalRule] = []
    ignored: list[str] = []
    for raw in _SPLIT.split(text or ""):
        entry = raw.strip()
        if not entry:
            continue
        if entry.count(":") != 2:
            if strict:
                raise AlloyError(f"elemental rule '{entry}' must have the form Blocks:Elements:Ratio.")
            ignored.append(entry)
            continue
        rules.append(parse_rule(entry, arch))
    return Elemental(tuple(rules), tuple(ignored))
