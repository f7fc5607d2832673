"""Merge checkpoint files into a new checkpoint file (CLI, API, standalone UI)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from .contracts import Report
from .dice import roll_for_sources
from .engine import execute
from .errors import AlloyError
from .io import HashCache, legacy_hash, sha256_file
from .io.writer import check_target
from .locate import SLOT_LABELS
from .metadata import merge_metadata
from .paths import shown
from .plan import SLOTS, build_plan, open_sources
from .recipe import Recipe
from .sinks import FileSink


def check_output_path(out_path: str, overwrite: bool) -> str:
    """Refuse a bad output path before any work: wrong extension, missing folder, existing file."""
    out_path = os.path.abspath(os.path.expanduser(out_path))
    if not out_path.lower().endswith(".safetensors"):
        raise AlloyError(f"The output file must end in .safetensors: {shown(out_path)}.")
    check_target(out_path, overwrite)
    return out_path


def _hash_jobs(pool, paths: dict) -> dict:
    """{slot: (future sha256, future legacy hash)}; legacy hashes only for the merged models."""
    cache = HashCache.default()
    return {slot: (pool.submit(sha256_file, path, cache), pool.submit(legacy_hash, path) if slot in SLOTS else None)
            for slot, path in paths.items()}


def merge_to_file(recipe: Recipe, out_path: str, *, overwrite: bool = False, device="auto", progress=None,
                  should_stop=None, presets=None, verify_hashes: bool = False, names: dict | None = None,
                  before_commit=None) -> Report:
    """Merge per `recipe` into `out_path`. With `verify_hashes`, the inputs must match recipe.hashes.

    Input hashes are computed on a helper thread while the merge runs and written into the header
    at the end; a mismatch (verify_hashes) aborts the save, leaving nothing behind. The recipe in
    the file names the models by `names` ({slot: file name}, default the inputs' file names) and
    sha256, never by path. `before_commit(final_recipe)` runs after the last tensor is written
    and before the file is renamed into place; if it raises, nothing is left."""
    recipe.validate()
    out_path = check_output_path(out_path, overwrite)
    sources = open_sources(recipe)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alloy-hash")
    plan = None
    try:
        recipe = roll_for_sources(recipe, sources)      # random block weights drawn once, recorded
        plan = build_plan(recipe, sources, presets=presets)
        paths = {slot: src.path for slot, src in sources.items()}
        if recipe.bake_vae:
            paths["vae"] = recipe.bake_vae
        jobs = _hash_jobs(pool, paths)
        final = {}

        def finalize():
            hashes = {slot: j[0].result() for slot, j in jobs.items()}
            if verify_hashes:
                for slot, want in (recipe.hashes or {}).items():
                    if slot in hashes and want and not hashes[slot].startswith(want):
                        raise AlloyError(f"{SLOT_LABELS[slot].capitalize()} ({shown(paths[slot])}) is not the "
                                         "file the recipe was made with (sha256 differs).")
            final["recipe"] = recipe.replace(hashes=hashes)
            legacy = {slot: j[1].result() for slot, j in jobs.items() if j[1] is not None}
            metadata = merge_metadata(final["recipe"], sources, plan, legacy, names)
            if before_commit is not None:
                before_commit(final["recipe"])
            return metadata

        # Provisional header: same shape as the final one (placeholder hashes), so the header size,
        # and with it the whole file, does not depend on what the recipe knew beforehand.
        placeholder = recipe.replace(hashes={slot: "0" * 64 for slot in paths})
        provisional = merge_metadata(placeholder, sources, plan, {slot: "0" * 8 for slot in sources}, names)
        sink = FileSink(out_path, overwrite=overwrite, metadata=provisional, finalize=finalize)
        report = execute(plan, sources, sink, device=device, progress=progress, should_stop=should_stop)
        report.recipe = final.get("recipe", recipe)
        report.warnings.extend(plan.notes)
        return report
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for src in sources.values():
            src.close()
        if plan is not None:
            for vsrc, _ in {id(v[0]): v for v in plan.vae.values()}.values():
                vsrc.close()
