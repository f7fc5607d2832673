"""The one explicit mutable object of the live-merge machinery: cache, live state, history, lock,
settings. WebUI-free: the environment is a `Host` (standalone here, the WebUI's in merger/webui.py).

Additions to DESIGN.md's Session API (used by the X/Y/Z axes, the REST API and the UI):
  - `draft`: the recipe last set up in the tab (`set_draft`); the X/Y/Z axes start from it.
  - `xyz_base()`, `model_changed()`, `update_settings(settings)`, `busy`, `live` (LiveState | None).
  - `job(title)`: context for user actions (Host.exclusive_job: the WebUI's generation queue).
  - `Busy(AlloyError)`: raised when a merge or restore is already running."""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .cache import SourceCache
from .dice import roll_for_sources
from .errors import AlloyError, Interrupted
from .history import History
from .host import MODEL_EXTS, Host, StandaloneHost, same_file  # noqa: F401 (the session's public names)
from .live import LiveSink, LiveState, as_live, restore as restore_keys
from . import livegroups
from .kernels import resolve_device
from .locate import Finder, folder_candidates, needed_slots
from .paths import input_file, output_file, shown
from .presets import Presets
from .recipe import MODEL_SLOTS, Recipe
from .settings import Settings
from .weights import RatioResolver

log = logging.getLogger("alloy")


class Busy(AlloyError):
    """Another merge/restore holds the session."""


class Session:
    """See module docstring and docs/DESIGN.md."""

    def __init__(self, host: Host, data_dir: str, settings: Settings | None = None, *, opener=None,
                 settings_source=None):
        """`opener(path, label)` opens a model file (default merger.io.open_source);
        `settings_source()` (optional) returns fresh Settings before each merge/restore."""
        self.host = host
        self._settings_source = settings_source
        self.xyz_touched = False
        self.data_dir = data_dir
        self.settings = settings or Settings()
        self.cache = SourceCache(self.settings.cache_bytes, opener=opener, gpu_device=self._gpu())
        self.history = History(data_dir, self.settings.history_max)
        self.live: LiveState | None = None
        self.draft: Recipe | None = None
        self.last_message = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # ---- settings / small state -------------------------------------------------------------
    def _gpu(self):
        s = self.settings
        return "cuda" if s.cache_on_gpu and s.compute_device in ("auto", "cuda") else None

    def update_settings(self, settings: Settings) -> None:
        self.settings = settings
        self.cache.set_budget(settings.cache_bytes)
        self.cache._gpu = self._gpu()
        self.history.max_entries = settings.history_max

    def set_draft(self, recipe: Recipe | None) -> None:
        self.draft = recipe

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def interrupt(self) -> None:
        self._stop.set()

    def job(self, title: str):
        """Context for a user action (API call, tab button): the host's exclusive job — in the
        WebUI, wait for the generation queue and begin/end a job like its own tools do. X/Y/Z cells
        merge inside a generation that already holds it and call merge_live directly."""
        return self.host.exclusive_job(title)

    def model_changed(self) -> None:
        """The host loaded another checkpoint: the merge is gone with it."""
        self.live = None

    @contextlib.contextmanager
    def _exclusive(self):
        if not self._lock.acquire(blocking=False):
            raise Busy("Alloy is busy with another merge; wait for it to finish or interrupt it.")
        try:
            self._stop.clear()
            if self._settings_source is not None:
                self.update_settings(self._settings_source())
            yield
        finally:
            self._lock.release()

    def _should_stop(self) -> bool:
        return self._stop.is_set() or bool(self.host.should_stop())

    # ---- recipes ----------------------------------------------------------------------------
    def resolve(self, recipe: Recipe) -> Recipe:
        """A copy whose model names are paths (see `locate`)."""
        return self.locate(recipe)[0]

    def locate(self, recipe: Recipe) -> tuple[Recipe, dict, list]:
        """(recipe with paths, {slot: file name to record}, notes). Each model the merge reads is
        found by sha256 first, then by name, among the host's models (merger.locate); the VAE
        to bake among the files of the host's VAE folders. Nothing outside them is reachable."""
        host = self.host
        finder = Finder(host.model_candidates(), direct=host.resolve_model, where=host.describe())
        slots = needed_slots(recipe)
        resolved, names, notes = finder.resolve(recipe, [s for s in slots if s != "vae"])
        if "vae" in slots:
            vaes = [c for d in host.vae_dirs() for c in folder_candidates(d, recursive=False)]
            vf = Finder(vaes, direct=host.resolve_vae, where=" or ".join(shown(d) for d in host.vae_dirs()))
            resolved, vnames, vnotes = vf.resolve(resolved, ["vae"])
            names.update(vnames)
            notes += vnotes
        return resolved, names, notes

    def load_recipe_file(self, name: str) -> Recipe:
        """A recipe file named over the UI (X/Y/Z axis): inside the models or the data folder."""
        return Recipe.load(input_file([self.host.models_dir(), self.data_dir], name, what="recipe file",
                                      exts=(".json",)))

    def _record(self, kind: str, recipe: dict | None, **fields) -> str | None:
        """Append to the history; a failure (full disk, read-only folder) is a warning, never an error:
        the merge it records has happened."""
        try:
            self.history.append(kind, recipe, **fields)
        except (OSError, ValueError) as e:
            log.warning("Alloy could not write its history %s: %s", self.history.path, e)
            return f"the history ({shown(self.history.path)}) could not be written: {getattr(e, 'strerror', None) or e}"
        return None

    def xyz_base(self) -> Recipe:
        """The recipe X/Y/Z cells start from: the tab's draft, else the live merge, else the last one."""
        if self.draft is not None:
            return self.draft
        if self.live is not None and self.live.recipe is not None:
            return self.live.recipe
        last = self.history.last_recipe()
        if last:
            return Recipe.from_dict(last)
        raise AlloyError("Set up a merge in the Alloy tab first: the X/Y/Z axes change one of its values.")

    def _open(self, recipe: Recipe) -> dict:
        from .plan import source_paths
        sources = {s: self.cache.open(p, f"model {s.upper()}") for s, p in source_paths(recipe).items()}
        self.cache.hold(src.fid for src in sources.values())
        return sources

    # ---- live merge -------------------------------------------------------------------------
    def merge_live(self, recipe: Recipe, progress=None):
        """Merge `recipe` into the loaded model in place (loading model A first if needed).

        Everything is resolved and checked (models, architectures, shapes, every recipe field)
        before model A is loaded or a tensor changes. Only keys whose Plan.signature changed since
        the last merge are recomputed; keys that return to "keep A" are put back from their
        originals. Any error or an interrupt restores the original model and re-raises
        (Interrupted: "… the original model was restored"). The inputs' sha256 (for the infotext)
        are computed on a helper thread while the merge runs."""
        from .engine import Report, execute

        with self._exclusive():
            resolved, _, notes = self.locate(recipe)
            resolved.validate()
            work = resolved.replace(hashes={})     # hashes are the record's, computed below
            sources = self._open(work)
            work = roll_for_sources(work, sources)      # random block weights drawn once, recorded
            fids = {s: src.fid for s, src in sources.items()}
            loaded = same_file(self.host.loaded_model_path(), work.model_a)
            plan, lg, new = self._plan(work, sources, fids, loaded)
            if not loaded:
                self.live = None       # hold nothing of the old model while the host loads A
                self.host.load_model(work.model_a)
            model = as_live(self.host.live_model())
            if model is None:
                raise AlloyError(f"The WebUI could not load {shown(work.model_a)} as the merge base (model A).")
            state = self.live if self.live is not None and same_file(self.live.base_path, work.model_a) \
                else LiveState(work.model_a)
            identity = (work.short_hash(), tuple(sorted(fids.items())))
            if state.identity == identity:
                self.live = state
                report = Report(recipe=state.recipe or work, warnings=list(notes))
                self.last_message = _with_warnings(f"{work.display_name()} is already loaded.", notes)
                return report
            if state.fids != fids:
                state.signatures.clear()
            grouped = lg.grouped if lg is not None else ()
            back = [k for k in state.originals if k not in grouped and (k not in plan or plan[k].action == "keep_a")]
            keys = [kp.key for kp in plan.items] + (back if lg is not None else list(state.originals))
            targets = model.targets(keys) if keys else {}
            sigs = {kp.key: plan.signature(kp.key) for kp in plan.items
                    if kp.action != "keep_a" and kp.key in targets}
            todo = {k for k, sig in sigs.items() if state.signatures.get(k) != sig}
            sink = LiveSink(targets, state, sources["a"], back)
            hits0 = self.cache.stats().hits
            hashing = _hash_inputs(work, {os.path.realpath(c.path): c.sha256 for c in self.host.model_candidates()
                                          if c.sha256 and len(c.sha256) == 64})
            self.host.job_begin(f"Alloy: {work.display_name()}")

            def on_progress(done, total, key):
                self.host.job_progress(done, total, key)
                if progress is not None:
                    progress(done, total, key)
            try:
                derived = self.cache.derived(tuple(fids[s] for s in sorted(fids)))
                t0 = time.perf_counter()
                with model.writing():
                    grouped_keys, packed = livegroups.apply(lg, new, sources, progress=on_progress,
                                                            should_stop=self._should_stop) if lg else (0, 0)
                    report = execute(plan, sources, sink, device=self.settings.compute_device,
                                     progress=on_progress, should_stop=self._should_stop, only_keys=todo,
                                     derived=derived if plan.method.multi is not None else None) \
                        if todo or back or lg is None else Report(recipe=work)
                report.keys_merged += grouped_keys
                report.seconds = time.perf_counter() - t0
            except BaseException as e:
                self._abandon(model, state, sources["a"])
                if isinstance(e, Interrupted):
                    raise Interrupted("The merge was stopped; the original model was restored.") from None
                raise
            finally:
                self.host.job_end()
            final = work.replace(hashes=hashing.result())
            for key in sink.written:
                state.signatures[key] = sigs[key]
            state.recipe, state.identity, state.fids = final, identity, fids
            report.keys_from_cache = self.cache.stats().hits - hits0 + packed      # before grouping reads
            if lg is None:
                state.plan = plan
                state.groups = self._group(plan, sources, fids, targets, state)
            self.live = state
            report.recipe = final
            report.warnings[:0] = notes + plan.notes
            self.host.on_live_changed(final)
            warning = self._record("live", final.to_dict(), seconds=round(report.seconds, 3),
                                   keys=len(todo) + grouped_keys,
                                   name=final.display_name(), hash=final.short_hash())
            if warning:
                report.warnings.append(warning)
            self.last_message = _with_warnings(report.message(), report.warnings)
            return report

    def _plan(self, work: Recipe, sources: dict, fids: dict, loaded: bool):
        """(plan, groups, their new ratios): the live merge's groups when they fit this recipe
        (the plan then holds only the keys not grouped), else (build_plan(...), None, None)."""
        from .plan import build_plan
        state = self.live
        lg = state.groups if loaded and state is not None and same_file(state.base_path, work.model_a) else None
        device = resolve_device(self.settings.compute_device)
        if lg is not None and lg.device == device and livegroups.usable(lg, work, fids):
            resolver = RatioResolver(work, lg.plan.arch, Presets())
            return livegroups.rest_plan(lg, work, resolver), lg, livegroups.ratios(lg, resolver)
        if state is not None:
            livegroups.release(state)
        return build_plan(work, sources), None, None

    def _group(self, plan, sources: dict, fids: dict, targets: dict, state: LiveState):
        """Group the keys this merge wrote for the next re-merge (None when nothing fits)."""
        if plan.method.multi is not None or not plan.method.elementwise:
            return None
        lg = livegroups.build(plan, sources, targets, state, RatioResolver(plan.recipe, plan.arch, Presets()),
                              resolve_device(self.settings.compute_device))
        if lg is not None:
            lg.template, lg.fids = livegroups.template(plan.recipe), fids
        return lg

    def _abandon(self, model, state: LiveState, src_a) -> None:
        """Put every modified key back and forget the merge (after an error or an interrupt)."""
        state.groups = None
        restore_keys(model, state, src_a)
        state.recipe = state.identity = state.plan = None
        state.signatures.clear()
        self.live = state
        self.host.on_live_changed(None)

    def restore(self) -> str:
        """Put the loaded checkpoint's original weights back, bit-exactly."""
        with self._exclusive():
            state, model = self.live, as_live(self.host.live_model())
            if state is None or not state.dirty or model is None:
                self.live = None if state is None else state
                self.last_message = "The loaded model already has its original weights."
                return self.last_message
            src_a = self.cache.open(state.base_path, "model A")
            fids = state.fids
            if fids and fids.get("a") != src_a.fid and any(o.kept is None for o in state.originals.values()):
                raise AlloyError(f"{shown(state.base_path)} changed on disk since the merge; reload the checkpoint "
                                 "in the WebUI to get its weights back.")
            n = len(state.originals)
            self._abandon(model, state, src_a)
            warning = self._record("restore", None, path=state.base_path)
            self.last_message = _with_warnings(
                f"Restored the original weights of {os.path.basename(state.base_path)} ({n} tensors).",
                [warning] if warning else [])
            return self.last_message

    # ---- files --------------------------------------------------------------------------------
    def output_path(self, name: str) -> str:
        """Output `name` (".safetensors" added) inside the models folder; names only, no paths
        (merger.paths.output_file: no `..`, absolute paths, links out or special files)."""
        return output_file(self.host.models_dir(), name)

    def merge_to_file(self, recipe: Recipe, name: str, *, overwrite: bool = False, progress=None):
        """Merge into a new file in the models folder. The file's metadata names the models by
        file name and sha256; the history (local) keeps the paths."""
        from .filemerge import merge_to_file
        with self._exclusive():
            out = self.output_path(name)
            resolved, names, notes = self.locate(recipe)
            report = merge_to_file(resolved, out, overwrite=overwrite, device=self.settings.compute_device,
                                   progress=progress, should_stop=self._should_stop, names=names)
            report.warnings[:0] = notes
            try:
                self.host.refresh_models()
            except Exception as e:  # noqa: BLE001 - the file is written; a stale list is a warning
                log.warning("Alloy could not refresh the model list", exc_info=True)
                report.warnings.append(f"the model list could not be refreshed ({type(e).__name__})")
            warning = self._record("file", report.recipe.to_dict(), path=report.path,
                                   seconds=round(report.seconds, 3), name=resolved.display_name())
            if warning:
                report.warnings.append(warning)
            self.last_message = _with_warnings(report.message(), report.warnings)
            return report

    def save_live(self, name: str, *, dtype: str | None = None, prune: bool = False,
                  bake_vae: str | None = None, overwrite: bool = False):
        """Write the live merge to a file by re-running its recipe (at `dtype`, default the setting)."""
        if self.live is None or self.live.recipe is None:
            raise AlloyError("There is no live merge to save; merge into the loaded model first.")
        recipe = self.live.recipe.replace(dtype=dtype or self.settings.save_dtype, prune=bool(prune),
                                          bake_vae=bake_vae or self.live.recipe.bake_vae)
        return self.merge_to_file(recipe, name, overwrite=overwrite)

    # ---- status -------------------------------------------------------------------------------
    def models(self) -> list[str]:
        """The model names this session can merge (the host's list)."""
        return list(self.host.list_models())

    def status(self) -> dict:
        live = self.live
        recipe = live.recipe if live is not None else None
        return {
            "busy": self.busy,
            "loaded": self.host.loaded_model_path(),
            "merged": recipe is not None,
            "name": recipe.display_name() if recipe else None,
            "hash": recipe.short_hash() if recipe else None,
            "recipe": recipe.to_dict() if recipe else None,
            "modified_keys": len(live.originals) if live is not None else 0,
            "cache": self.cache.stats()._asdict(),
            "message": self.last_message,
        }


def _with_warnings(message: str, warnings: list) -> str:
    return message + "".join(f" Warning: {w}." for w in warnings if w)


def _hash_inputs(recipe: Recipe, known: dict):
    """A future of {slot: sha256} of the recipe's input files (the ones that can be hashed);
    `known` {realpath: sha256} are the host's own hashes (the WebUI's cache), used as they are."""
    from .io import HashCache, sha256_file

    def run() -> dict:
        cache, out = HashCache.default(), {}
        for slot in needed_slots(recipe):
            path = getattr(recipe, MODEL_SLOTS[slot])
            try:
                out[slot] = known.get(os.path.realpath(path)) or sha256_file(path, cache)
            except AlloyError as e:
                log.warning("Alloy could not hash %s: %s", shown(path), e)
        return out
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alloy-hash")
    try:
        return pool.submit(run)
    finally:
        pool.shutdown(wait=False)
