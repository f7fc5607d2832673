"""Merge checkpoint files into a new checkpoint file (CLI, API, standalone UI)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from .engine import Report, execute
from .errors import AlloyError
from .io import HashCache, legacy_hash, sha256_file
from .io.writer import check_target
from .metadata import merge_metadata
from .plan import build_plan, open_sources
from .recipe import Recipe
from .sinks import FileSink


def check_output_path(out_path: str, overwrite: bool) -> str:
    """Refuse a bad output path before any work: wrong extension, missing folder, existing file."""
    out_path = os.path.abspath(os.path.expanduser(out_path))
    if not out_path.lower().endswith(".safetensors"):
        raise AlloyError(f"The output file must end in .safetensors: {out_path}.")
    check_target(out_path, overwrite)
    return out_path


def _hash_jobs(pool, sources):
    cache = HashCache.default()
    return {slot: (pool.submit(sha256_file, src.path, cache), pool.submit(legacy_hash, src.path))
            for slot, src in sources.items()}


def merge_to_file(recipe: Recipe, out_path: str, *, overwrite: bool = False, device="auto", progress=None,
                  should_stop=None, presets=None, verify_hashes: bool = False) -> Report:
    """Merge per `recipe` into `out_path`. With `verify_hashes`, the inputs must match recipe.hashes.

    Input hashes are computed on a helper thread while the merge runs and written into the header
    at the end; a mismatch (verify_hashes) aborts the save, leaving nothing behind."""
    recipe.validate()
    out_path = check_output_path(out_path, overwrite)
    sources = open_sources(recipe)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alloy-hash")
    plan = None
    try:
        plan = build_plan(recipe, sources, presets=presets)
        jobs = _hash_jobs(pool, sources)
        final = {}

        def finalize():
            hashes = {slot: j[0].result() for slot, j in jobs.items()}
            if verify_hashes:
                for slot, want in (recipe.hashes or {}).items():
                    if slot in hashes and want and want != hashes[slot]:
                        raise AlloyError(f"Model {slot.upper()} ({sources[slot].path}) is not the file the "
                                         f"recipe was made with (sha256 differs).")
            final["recipe"] = recipe.replace(hashes=hashes)
            legacy = {slot: j[1].result() for slot, j in jobs.items()}
            return merge_metadata(final["recipe"], sources, plan, legacy)

        # Provisional header: same shape as the final one (placeholder hashes), so the header size,
        # and with it the whole file, does not depend on what the recipe knew beforehand.
        placeholder = recipe.replace(hashes={slot: "0" * 64 for slot in sources})
        provisional = merge_metadata(placeholder, sources, plan, {slot: "0" * 8 for slot in sources})
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
