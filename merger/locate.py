"""Finding the files a recipe names: by sha256 first, then by file name.

Recipes written into files and infotext name each model by file name and sha256 (full in file
metadata, the first 10 hex digits in infotext). Loading one finds every model among the
candidates the environment offers (the WebUI's checkpoint list, the models folder, `run
--models-dir`): first a file whose known hash matches (the WebUI's own, or Alloy's hash cache;
nothing is read), then files of the same name (hashed now, once per file version), then, where
asked (`hash_unknown`, the CLI), every other candidate; a file found only by name is used with a
note that its sha256 differs."""
from __future__ import annotations

import os
from typing import Callable, Iterable, NamedTuple

from .errors import AlloyError
from .io.hashing import HashCache, cached_sha256, sha256_file
from .paths import MODEL_EXTS, shown
from .recipe import MODEL_SLOTS, Recipe, file_name

SLOT_LABELS = {**{s: f"model {s.upper()}" for s in "abcdef"}, "vae": "the VAE"}


def needed_slots(recipe: Recipe) -> list[str]:
    """The model slots a merge of `recipe` reads ("a", "b", "c" when its method needs it, the
    fine-tunes B…F of a multi-model mode, "vae")."""
    from .methods import get_method
    from .plan import merge_slots
    slots = list(merge_slots(recipe, get_method(recipe.mode, recipe.calc)))
    if recipe.bake_vae:
        slots.append("vae")
    return slots


class Candidate(NamedTuple):
    name: str                   # what the environment lists (WebUI title, name in the models folder)
    path: str
    sha256: str | None = None   # a hash the environment already knows


def folder_candidates(folder: str, *, recursive: bool = True) -> list[Candidate]:
    """Model files in `folder` (names relative to it), sorted."""
    out = []
    if not folder or not os.path.isdir(folder):
        return out
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for f in sorted(files):
            if f.lower().endswith(MODEL_EXTS) and not f.startswith("."):
                path = os.path.join(root, f)
                out.append(Candidate(os.path.relpath(path, folder), path))
    return out


def _matches(known: str | None, sha: str) -> bool:
    return bool(known) and known.lower().startswith(sha.lower())


class Finder:
    """Looks models up among `candidates`; `direct(name)` is how the environment resolves a name
    itself (a path the user gave, a WebUI title), returning a path or None."""

    def __init__(self, candidates: Iterable[Candidate], *, direct: Callable[[str], str | None] | None = None,
                 hash_unknown: bool = False, cache: HashCache | None = None, where: str = "the models folder",
                 note: Callable[[str], None] | None = None):
        self.candidates = list(candidates)
        self.direct = direct or (lambda name: None)
        self.hash_unknown = hash_unknown
        self.cache = cache if cache is not None else HashCache.default()
        self.where = where
        self.note = note or (lambda text: None)

    def _sha(self, c: Candidate, compute: bool) -> str | None:
        known = c.sha256 or cached_sha256(c.path, self.cache)
        if known or not compute:
            return known
        try:
            return sha256_file(c.path, self.cache)
        except AlloyError:
            return None

    def find(self, slot: str, name: str | None, sha: str | None) -> tuple[Candidate, str]:
        """(the candidate, a note: "" or a sentence about a hash mismatch); AlloyError naming the
        model when nothing fits."""
        label = SLOT_LABELS.get(slot, slot)
        base = file_name(name)
        direct = self._direct(name)
        if not sha:
            if direct is not None:
                return direct, ""
            same = [c for c in self.candidates if file_name(c.name) == base]
            if len(same) == 1:
                return same[0], ""
            raise self._missing(label, name, sha, same)
        tried = set()
        if direct is not None:
            tried.add(direct.path)
            if _matches(self._sha(direct, True), sha):
                return direct, ""
        for c in self.candidates:
            if c.path not in tried and _matches(self._sha(c, False), sha):
                return c, ""
        same = [c for c in self.candidates if file_name(c.name) == base and c.path not in tried]
        for c in same:
            tried.add(c.path)
            if _matches(self._sha(c, True), sha):
                return c, ""
        if self.hash_unknown:
            for c in self.candidates:
                if c.path not in tried and not self._sha(c, False):
                    self.note(f"hashing {shown(c.path)} to look for {label} ({shown(base)})")
                    if _matches(self._sha(c, True), sha):
                        return c, ""
        fallback = direct or (same[0] if len(same) == 1 else None)
        if fallback is not None:
            return fallback, (f"{label} ({shown(base)}): no file with sha256 {sha[:10]} was found, so "
                              f"{shown(fallback.name)} (same name, different sha256) is used")
        raise self._missing(label, name, sha, same)

    def _direct(self, name: str | None) -> Candidate | None:
        if not name:
            return None
        try:
            path = self.direct(name)
        except AlloyError:
            path = None
        if not path:
            return None
        known = next((c for c in self.candidates if os.path.realpath(c.path) == os.path.realpath(path)), None)
        return known or Candidate(name, path)

    def _missing(self, label: str, name: str | None, sha: str | None, same: list) -> AlloyError:
        what = f"{label} of the recipe ({shown(file_name(name) or '?')}" + (f", sha256 {sha[:10]})" if sha else ")")
        if len(same) > 1:
            return AlloyError(f"{what} is ambiguous in {self.where}: "
                              f"{', '.join(shown(c.name) for c in same[:5])} share its name.")
        how = "no file there has its sha256 or its name" if sha else "no file there has its name"
        return AlloyError(f"{what} was not found in {self.where} ({how}).")

    def resolve(self, recipe: Recipe, slots=None) -> tuple[Recipe, dict[str, str], list[str]]:
        """(recipe with paths, {slot: recorded name}, notes) for the models in `slots` (default:
        those the recipe's merge reads: A, B, C when its method needs C, the VAE to bake)."""
        changes, names, notes = {}, {}, []
        for slot in slots if slots is not None else needed_slots(recipe):
            field = MODEL_SLOTS[slot]
            value = getattr(recipe, field)
            if not value:
                continue
            cand, note = self.find(slot, value, (recipe.hashes or {}).get(slot))
            changes[field] = cand.path
            names[slot] = file_name(value)
            if note:
                notes.append(note)
        return recipe.replace(**changes), names, notes
