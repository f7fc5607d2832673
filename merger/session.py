"""The one explicit mutable object of the live-merge machinery: cache, live state, history, lock,
settings. WebUI-free: the environment is a `Host` (standalone here, the WebUI's in merger/webui.py).

Additions to DESIGN.md's Session API (used by the X/Y/Z axes, the REST API and the UI):
  - `draft`: the recipe last set up in the tab (`set_draft`); the X/Y/Z axes start from it.
  - `xyz_base()`, `model_changed()`, `update_settings(settings)`, `busy`, `live` (LiveState | None).
  - `job(title)`: context for user actions (Host.exclusive_job: the WebUI's generation queue).
  - `Busy(AlloyError)`: raised when a merge or restore is already running."""
from __future__ import annotations

import contextlib
import os
import threading

from .cache import SourceCache, file_id
from .errors import AlloyError, Interrupted
from .history import History
from .live import LiveSink, LiveState, owner_map, restore as restore_keys
from .recipe import Recipe
from .settings import Settings

MODEL_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class Busy(AlloyError):
    """Another merge/restore holds the session."""


class Host:
    """What the environment offers. Defaults describe an environment without a live model."""

    def list_models(self) -> list[str]: return []
    def refresh_models(self) -> None: pass
    def resolve_model(self, name: str) -> str: raise AlloyError(f"Unknown model '{name}'.")
    def models_dir(self) -> str: return os.getcwd()
    def live_model(self): return None
    def loaded_model_path(self) -> str | None: return None
    def load_model(self, path: str) -> None: raise AlloyError("There is no model loader here.")
    def should_stop(self) -> bool: return False
    def job_begin(self, title: str) -> None: pass
    def job_progress(self, done: int, total: int, key: str) -> None: pass
    def job_end(self) -> None: pass
    def on_live_changed(self, recipe: Recipe | None) -> None: pass
    def exclusive_job(self, title: str): return contextlib.nullcontext()


class StandaloneHost(Host):
    """A models folder; no live model (the standalone app and the CLI)."""

    def __init__(self, models_dir: str, lora_dir: str | None = None):
        self._dir = os.path.abspath(models_dir)
        self._lora_dir = os.path.abspath(lora_dir) if lora_dir else self._dir

    def models_dir(self) -> str:
        return self._dir

    def lora_dir(self) -> str:
        """Where the LoRA tools list LoRAs and write their outputs."""
        return self._lora_dir

    def list_models(self) -> list[str]:
        out = []
        for root, _, files in os.walk(self._dir):
            for f in files:
                if f.lower().endswith(MODEL_EXTS):
                    out.append(os.path.relpath(os.path.join(root, f), self._dir))
        return sorted(out, key=str.casefold)

    def resolve_model(self, name: str) -> str:
        """An existing path, a name relative to the models folder, or a unique file stem."""
        if not name:
            raise AlloyError("No model was named.")
        for cand in (name, os.path.join(self._dir, name)):
            if os.path.isfile(cand):
                return os.path.abspath(cand)
        stem = os.path.splitext(os.path.basename(name.split(" [")[0]))[0]
        hits = [m for m in self.list_models() if os.path.splitext(os.path.basename(m))[0] == stem]
        if len(hits) == 1:
            return os.path.join(self._dir, hits[0])
        raise AlloyError(f"Model '{name}' was not found in {self._dir}.")


def same_file(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


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
        """A copy whose model names are paths (host.resolve_model)."""
        changes = {}
        for slot in ("model_a", "model_b", "model_c"):
            v = getattr(recipe, slot)
            if v:
                changes[slot] = self.host.resolve_model(v)
        return recipe.replace(**changes)

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
        from .methods import get_method
        slots = {"a": recipe.model_a, "b": recipe.model_b}
        if get_method(recipe.mode, recipe.calc).needs_c:
            if not recipe.model_c:
                raise AlloyError(f"The {recipe.mode.replace('_', ' ')} mode ({recipe.calc}) needs a model C.")
            slots["c"] = recipe.model_c
        return {s: self.cache.open(p, f"model {s.upper()}") for s, p in slots.items() if p}

    # ---- live merge -------------------------------------------------------------------------
    def merge_live(self, recipe: Recipe, progress=None):
        """Merge `recipe` into the loaded model in place (loading model A first if needed).

        Only keys whose Plan.signature changed since the last merge are recomputed; keys that
        return to "keep A" are put back from their originals. Any error or an interrupt restores
        the original model and re-raises (Interrupted: "… the original model was restored")."""
        from .engine import Report, execute
        from .plan import build_plan

        with self._exclusive():
            recipe = self.resolve(recipe)
            recipe.validate()
            model = self.host.live_model()
            if model is None:
                raise AlloyError("No model is loaded to merge into; use a file merge instead.")
            if not same_file(self.host.loaded_model_path(), recipe.model_a):
                self.host.load_model(recipe.model_a)
                self.live = None
                model = self.host.live_model()
            state = self.live if self.live is not None and same_file(self.live.base_path, recipe.model_a) \
                else LiveState(recipe.model_a)
            sources = self._open(recipe)
            fids = {s: src.fid for s, src in sources.items()}
            identity = (recipe.short_hash(), tuple(sorted(fids.items())))
            if state.identity == identity:
                self.live = state
                self.last_message = f"{recipe.display_name()} is already loaded."
                return Report(recipe=recipe)
            if state.fids != fids:
                state.signatures.clear()
            plan = build_plan(recipe, sources)
            owners = owner_map(model)
            sigs = {kp.key: plan.signature(kp.key) for kp in plan.items
                    if kp.action != "keep_a" and kp.key in owners}
            todo = {k for k, sig in sigs.items() if state.signatures.get(k) != sig}
            back = [k for k in state.originals if k not in plan or plan[k].action == "keep_a"]
            sink = LiveSink(model, state, sources["a"])
            hits0 = self.cache.stats().hits
            self.host.job_begin(f"Alloy: {recipe.display_name()}")

            def on_progress(done, total, key):
                self.host.job_progress(done, total, key)
                if progress is not None:
                    progress(done, total, key)
            try:
                restore_keys(model, state, sources["a"], back)
                report = execute(plan, sources, sink, device=self.settings.compute_device,
                                 progress=on_progress, should_stop=self._should_stop, only_keys=todo)
            except BaseException as e:
                self._abandon(model, state, sources["a"])
                if isinstance(e, Interrupted):
                    raise Interrupted("The merge was stopped; the original model was restored.") from None
                raise
            finally:
                self.host.job_end()
            for key in sink.written:
                state.signatures[key] = sigs[key]
            state.recipe, state.identity, state.plan = recipe, identity, plan
            state.fids = fids
            self.live = state
            report.keys_from_cache = self.cache.stats().hits - hits0
            self.host.on_live_changed(recipe)
            self.history.append("live", recipe.to_dict(), seconds=round(report.seconds, 3),
                                keys=len(todo), name=recipe.display_name(), hash=recipe.short_hash())
            self.last_message = report.message()
            return report

    def _abandon(self, model, state: LiveState, src_a) -> None:
        """Put every modified key back and forget the merge (after an error or an interrupt)."""
        restore_keys(model, state, src_a)
        state.recipe = state.identity = state.plan = None
        state.signatures.clear()
        self.live = state
        self.host.on_live_changed(None)

    def restore(self) -> str:
        """Put the loaded checkpoint's original weights back, bit-exactly."""
        with self._exclusive():
            state, model = self.live, self.host.live_model()
            if state is None or not state.dirty or model is None:
                self.live = None if state is None else state
                self.last_message = "The loaded model already has its original weights."
                return self.last_message
            src_a = self.cache.open(state.base_path, "model A")
            fids = state.fids
            if fids and fids.get("a") != src_a.fid and any(o.kept is None for o in state.originals.values()):
                raise AlloyError(f"{state.base_path} changed on disk since the merge; reload the checkpoint "
                                 "in the WebUI to get its weights back.")
            n = len(state.originals)
            self._abandon(model, state, src_a)
            self.history.append("restore", None, path=state.base_path)
            self.last_message = f"Restored the original weights of {os.path.basename(state.base_path)} ({n} tensors)."
            return self.last_message

    # ---- files --------------------------------------------------------------------------------
    def output_path(self, name: str) -> str:
        """`name` (".safetensors" added) inside the models folder unless it is a path."""
        if not name or not str(name).strip():
            raise AlloyError("Give the output file a name.")
        name = str(name).strip()
        if not name.lower().endswith(".safetensors"):
            name += ".safetensors"
        return name if os.path.isabs(name) else os.path.join(self.host.models_dir(), name)

    def merge_to_file(self, recipe: Recipe, name: str, *, overwrite: bool = False, progress=None):
        from .filemerge import merge_to_file
        with self._exclusive():
            recipe = self.resolve(recipe)
            report = merge_to_file(recipe, self.output_path(name), overwrite=overwrite,
                                   device=self.settings.compute_device, progress=progress,
                                   should_stop=self._should_stop)
            self.host.refresh_models()
            self.history.append("file", report.recipe.to_dict(), path=report.path,
                                seconds=round(report.seconds, 3), name=recipe.display_name())
            self.last_message = report.message()
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
