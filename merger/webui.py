"""The adapter to AUTOMATIC1111's WebUI (v1.10.1); imports `modules.*` only inside functions.
`register()` is called by scripts/alloy.py. Stable Diffusion WebUI Forge's adapter
(merger/forge.py) extends its Host and reuses its registration; reForge and Forge Classic run
this adapter, their loaded model through merger/forge_v1.py."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import weakref

from .errors import AlloyError
from .locate import Candidate
from .paths import shown
from .session import Host, Session, same_file
from .settings import OPTIONS, Settings, from_getter, option_key

EXT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XYZ_MODULE = "xyz_grid.py"
DATA_DIR_ENV = "ALLOY_DATA_DIR"
SESSION_ATTR = "alloy_session"
INFOTEXT_NAME, INFOTEXT_HASH, INFOTEXT_RECIPE = "Alloy merge", "Alloy hash", "Alloy recipe"
_STATE_FIELDS = ("job", "textinfo", "sampling_step", "sampling_steps")


class WebUIHost(Host):
    """The WebUI's checkpoints, loaded model, shared.state progress and checkpoint info."""

    def __init__(self):
        self._real_info = None     # (weakref to model, CheckpointInfo, sd_model_hash) while a merge is live
        self._saved_state = None
        self.session = None        # set by register(); tagged onto the model it merges into

    def list_models(self) -> list[str]:
        from modules import sd_models
        return list(sd_models.checkpoint_tiles())

    def refresh_models(self) -> None:
        from modules import sd_models
        sd_models.list_models()

    def resolve_model(self, name: str) -> str:
        """A checkpoint of the WebUI's list, by title, name, hash or path (a path only when it is one
        of the listed files: names from the API and the UI reach nothing else)."""
        from modules import sd_models
        if isinstance(name, str) and os.path.isabs(name):
            info = next((i for i in sd_models.checkpoints_list.values() if same_file(i.filename, name)), None)
        else:
            info = sd_models.get_closet_checkpoint_match(name) if name else None
        if info is None:
            raise AlloyError(f"Checkpoint {shown(name)} is not in the WebUI's checkpoint list; refresh the list.")
        return info.filename

    def model_candidates(self) -> list[Candidate]:
        """Every listed checkpoint, with the sha256 the WebUI already knows (its hash cache)."""
        from modules import sd_models
        return [Candidate(i.title, i.filename, getattr(i, "sha256", None) or None)
                for i in list(sd_models.checkpoints_list.values())]

    def describe(self) -> str:
        return "the WebUI's checkpoint list"

    def models_dir(self) -> str:
        from modules import sd_models, shared
        return (getattr(shared.cmd_opts, "ckpt_dir", None) or getattr(sd_models, "model_path", None)
                or shared.models_path)

    def vae_dirs(self) -> list[str]:
        """The WebUI's VAE folders (--vae-dir, models/VAE) and the checkpoints folder."""
        from modules import shared
        dirs = [getattr(shared.cmd_opts, "vae_dir", None), os.path.join(shared.models_path, "VAE"), self.models_dir()]
        return [d for d in dict.fromkeys(dirs) if d]

    def lora_dir(self) -> str:
        """The built-in Lora extension's folder (--lora-dir, else models/Lora)."""
        from modules import shared
        return getattr(shared.cmd_opts, "lora_dir", None) or os.path.join(shared.models_path, "Lora")

    def sd_model(self):
        """The WebUI's loaded model object (carries the checkpoint info), or None."""
        from modules import shared
        return shared.sd_model

    def live_model(self):
        """The loaded model; reForge's / Forge Classic's with their ldm_patched LoRA handling."""
        from . import forge_v1
        model = self.sd_model()
        return forge_v1.ForgeV1Live(model, unpatch_all) if forge_v1.detected(model) else model

    def loaded_model_path(self) -> str | None:
        return getattr(self.sd_model(), "sd_model_checkpoint", None)

    def load_model(self, path: str) -> None:
        """Load checkpoint `path` through the WebUI (reload_model_weights) and record it as the
        checkpoint option, as A1111's load_model_weights does (reForge's loader does not, and its
        next generation would load the option's checkpoint over the merge)."""
        from modules import sd_models, shared
        info = checkpoint_info(path)
        sd_models.reload_model_weights(info=info)
        if not same_file(self.loaded_model_path(), path):
            raise AlloyError(f"The WebUI could not load {path} as the merge base (model A).")
        shared.opts.data["sd_model_checkpoint"] = info.title

    @contextlib.contextmanager
    def exclusive_job(self, title: str):
        """What the WebUI does around its own jobs (call_queue.wrap_gradio_gpu_call): wait for the
        generation queue, so weights never change under a running generation, then
        shared.state.begin() (which clears an Interrupt left from an earlier generation) … end()."""
        from modules import call_queue, shared
        with call_queue.queue_lock:
            shared.state.begin(job=title)
            try:
                yield
            finally:
                shared.state.end()

    def should_stop(self) -> bool:
        from modules import shared
        return bool(shared.state.interrupted)

    def job_begin(self, title: str) -> None:
        from modules import shared
        st = shared.state
        self._saved_state = {f: getattr(st, f, None) for f in _STATE_FIELDS}
        st.job, st.textinfo = title, title

    def job_progress(self, done: int, total: int, key: str) -> None:
        from modules import shared
        st = shared.state
        st.sampling_steps, st.sampling_step, st.textinfo = total, done, f"Alloy: {key}"

    def job_end(self) -> None:
        from modules import shared
        for f, v in (self._saved_state or {}).items():
            setattr(shared.state, f, v)
        self._saved_state = None

    def on_live_changed(self, recipe) -> None:
        """Show the merge as the model's checkpoint info (name, recipe hash); put the real one back
        when `recipe` is None. The filename stays A's so the WebUI does not reload A."""
        model = self.sd_model()
        if model is None:
            return
        if self._real_info is not None and self._real_info[0]() is not model:
            self._real_info = None
        if recipe is None:
            if self._real_info is not None:
                _, info, model_hash = self._real_info
                model.sd_checkpoint_info, model.sd_model_hash = info, model_hash
                self._real_info = None
            return
        if self.session is not None:
            setattr(model, SESSION_ATTR, self.session)     # survives "Reload UI", see register()
        if self._real_info is None:
            # a weak reference: the WebUI must be able to free this model when it loads another one
            self._real_info = (weakref.ref(model), model.sd_checkpoint_info, getattr(model, "sd_model_hash", None))
        model.sd_checkpoint_info = merged_checkpoint_info(self._real_info[1], recipe)
        model.sd_model_hash = model.sd_checkpoint_info.shorthash

    def forget(self) -> None:
        self._real_info = None

    def read_settings(self) -> Settings:
        return read_settings()


def unpatch_all() -> None:
    """reForge / Forge Classic: put every loaded ModelPatcher's backed-up Parameters back
    (ldm_patched's model_management; see merger/forge_v1.py)."""
    from ldm_patched.modules import model_management
    model_management.unload_all_models()


def checkpoint_info(path: str):
    """The WebUI's CheckpointInfo of file `path` (registered when it is not in the list yet)."""
    from modules import sd_models
    info = next((i for i in sd_models.checkpoints_list.values() if same_file(i.filename, path)), None)
    if info is None:
        info = sd_models.CheckpointInfo(path)
        info.register()
    return info


def merged_checkpoint_info(real, recipe):
    """A copy of `real` named after the merge, with sha256 = sha256 of the recipe identity."""
    info = copy.copy(real)
    name = recipe.display_name()
    name = name if len(name) <= 120 else name[:117] + "..."
    blob = json.dumps(recipe.identity(), sort_keys=True, separators=(",", ":"))
    info.sha256 = hashlib.sha256(blob.encode()).hexdigest()
    info.shorthash = recipe.short_hash()
    info.name = info.name_for_extra = info.model_name = name
    info.title = f"{name} [{info.shorthash}]"
    info.short_title = info.title
    info.ids = [info.title]
    info.alloy_recipe = recipe
    return info


def read_settings() -> Settings:
    from modules import shared
    return from_getter(lambda key, default: getattr(shared.opts, key, default))


def add_settings() -> None:
    """Settings → Alloy."""
    import gradio as gr
    from modules import shared
    components = {"slider": gr.Slider, "radio": gr.Radio, "checkbox": gr.Checkbox, "number": gr.Number}
    defaults = Settings()
    for spec in OPTIONS:
        shared.opts.add_option(option_key(spec.field), shared.OptionInfo(
            getattr(defaults, spec.field), spec.label, components[spec.component], dict(spec.args),
            section=("alloy", "Alloy")))


def infotext_fields(recipe) -> dict:
    """The generation infotext's Alloy fields: the recipe names its models by file name and short
    sha256 (as the WebUI's own `Model hash`), never by path (images get shared)."""
    return {INFOTEXT_NAME: recipe.display_name(), INFOTEXT_HASH: recipe.short_hash(),
            INFOTEXT_RECIPE: json.dumps(recipe.shared(short=True).to_dict(), separators=(",", ":"))}


def make_script_class(session: Session):
    """The always-visible script: merges an X/Y/Z cell's recipe before processing, and writes the
    live recipe into the images' infotext."""
    from modules import scripts
    from . import xyz

    class AlloyScript(scripts.Script):
        def title(self):
            return "Alloy"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def before_process(self, p, *args):
            if xyz.pending(p):
                try:
                    xyz.run_cell(session, p)
                except AlloyError:
                    # The WebUI only logs a script's error and would go on generating this and the
                    # next cells with the wrong weights under the cell's label: stop the job.
                    from modules import shared
                    shared.state.interrupt()
                    raise

        def process(self, p, *args):
            live = session.live
            if live is not None and live.recipe is not None:
                p.extra_generation_params.update(infotext_fields(live.recipe))

    return AlloyScript


def find_xyz_module():
    from modules import scripts
    for d in scripts.scripts_data:
        if d.script_class.__module__ == XYZ_MODULE:
            return d.module
    return None


def register_axes(session: Session) -> bool:
    """Add the Alloy axes to the X/Y/Z plot (at on_before_ui) and wrap its run() so that the
    original is restored after a grid when the setting asks for it."""
    from . import xyz
    module = find_xyz_module()
    if module is None:
        return False
    module.axis_options[:] = [o for o in module.axis_options if not str(o.label).startswith("[Alloy]")]
    module.axis_options.extend(xyz.make_axes(module.AxisOption, session))
    script_cls = next(v for v in vars(module).values()
                      if isinstance(v, type) and v.__module__ == XYZ_MODULE and hasattr(v, "run") and hasattr(v, "title"))
    run = getattr(script_cls.run, "__alloy_original__", script_cls.run)

    def run_then_restore(self, p, *args, **kwargs):
        before = session.live.recipe if session.live is not None else None
        session.xyz_touched = False
        # The WebUI applies a request's override_settings only inside each cell's generation, so
        # an API override of the restore setting is read here, from the grid's own p.
        restore = (getattr(p, "override_settings", None) or {}).get(option_key("restore_after_xyz"))
        try:
            return run(self, p, *args, **kwargs)
        finally:
            xyz.finish_grid(session, before, restore=restore)

    run_then_restore.__alloy_original__ = run
    script_cls.run = run_then_restore
    return True


def build_tabs(session: Session):
    try:
        from .ui import build_tab
    except ImportError:
        return []
    return [(build_tab(session, live=True), "Alloy", "alloy")]


def session_of_loaded_model():
    """The Session that merged into the loaded model, when "Reload UI" runs scripts/alloy.py again
    (the model and its merged weights stay; a new Session would not know them), else None."""
    from modules import sd_models
    model = getattr(getattr(sd_models, "model_data", None), "sd_model", None)
    return getattr(model, SESSION_ATTR, None)


def api_dependencies(app) -> list:
    """The WebUI's own --api-auth check for Alloy's routes: the dependencies its /sdapi routes
    carry (modules.api.api.Api.auth, HTTP basic against --api-auth's user:password pairs), or,
    with --api-auth but without --api, that same Api.auth bound to the parsed credentials.
    [] without --api-auth."""
    from modules import shared
    auth = getattr(shared.cmd_opts, "api_auth", None)
    if not auth:
        return []
    for route in getattr(app, "routes", []):
        if str(getattr(route, "path", "")).startswith("/sdapi/v1/") and getattr(route, "dependencies", None):
            return list(route.dependencies)
    import types

    from fastapi import Depends
    from modules.api.api import Api
    holder = types.SimpleNamespace(credentials=dict(pair.split(":", 1) for pair in auth.split(",") if ":" in pair))
    return [Depends(types.MethodType(Api.auth, holder))]


def mount_api(session, app) -> None:
    """Mount the REST API on the WebUI's app (at app start), behind the WebUI's --api-auth."""
    from .api import create_router
    app.include_router(create_router(session, dependencies=api_dependencies(app)))


def register(data_dir: str | None = None, host_class=WebUIHost):
    """Create the session (or take over the one of the loaded model after "Reload UI") and register
    every callback; returns the always-visible Script class.
    History lives in `data_dir`, else $ALLOY_DATA_DIR (tests), else the extension's data/ folder.
    `host_class`: the WebUI's Host (merger/forge.py passes Forge's)."""
    from modules import script_callbacks
    session = session_of_loaded_model()
    if session is None:
        host = host_class()
        data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or os.path.join(EXT_ROOT, "data")
        session = Session(host, data_dir, host.read_settings(), settings_source=host.read_settings)
        host.session = session

    def on_model_loaded(sd_model):
        if session.busy:
            return      # our own load of model A inside merge_live
        session.model_changed()
        session.host.forget()

    script_callbacks.on_ui_settings(add_settings)
    script_callbacks.on_before_ui(lambda: register_axes(session))
    script_callbacks.on_app_started(lambda demo, app: mount_api(session, app))
    script_callbacks.on_model_loaded(on_model_loaded)
    script_callbacks.on_ui_tabs(lambda: build_tabs(session))
    cls = make_script_class(session)
    cls.alloy_session = session
    return cls
