"""Puts the Forge stand-in first on sys.path (its `modules`, `backend`, `modules_forge`, `networks`)
and builds a fresh "Forge" world per test: tiny A/B/C checkpoints with real key names of an
architecture (tests/fixtures.py, merger/layouts), model A loaded the Forge way
(lazily, by the first generation). `forge_world` swaps the stand-in in and out of sys.modules, so
the A1111 stand-in's tests (whose `modules` has the same name) keep working in the same run."""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

STANDIN = Path(__file__).resolve().parent
REPO = STANDIN.parents[1]
A1111 = STANDIN.parent / "webui_standin"
PACKAGES = ("modules", "backend", "modules_forge", "networks", "tinysd")
DTYPE_DEFAULTS = {"unet": torch.float32, "text_encoder": torch.float16, "vae": torch.float32}


def _ours(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PACKAGES)


@contextlib.contextmanager
def installed():
    """The stand-in as the importable WebUI for the duration of the block."""
    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if _ours(k)]}
    path = list(sys.path)
    sys.path[:0] = [str(STANDIN), str(STANDIN / "lora"), str(REPO)]
    try:
        import modules
        assert str(modules.__file__).startswith(str(STANDIN)), modules.__file__
        yield
    finally:
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        sys.path[:] = path


def state_dict(arch: str, seed: int, dtype=torch.float16) -> dict:
    """A tiny checkpoint of `arch` ("flux_bare": a bare Flux transformer file) with real key names."""
    from tests.fixtures import tiny_state_dict
    if arch == "flux_bare":
        return tiny_state_dict("flux", seed, dtype, bare=True)
    return tiny_state_dict(arch, seed, dtype)


def load_xyz():
    spec = importlib.util.spec_from_file_location("xyz_grid.py", A1111 / "scripts" / "xyz_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_world(tmp_path, arch: str = "sd1", *, dtypes=None, file_dtype=torch.float16, warmup=True, load=True):
    """Fresh stand-in state (call inside `installed()`): A (seed 1), B (2), C (3); model A selected
    and, with `warmup`, loaded by a first generation (as the harness's start.sh does)."""
    from backend import memory_management
    from modules import processing, script_callbacks, scripts, sd_models, shared, shared_state
    from modules_forge import main_entry
    import networks

    models = Path(tmp_path) / "models"
    models.mkdir(exist_ok=True)
    paths = {}
    for s, seed in (("a", 1), ("b", 2), ("c", 3)):
        paths[s] = str(models / f"{s.upper()}.safetensors")
        save_file(state_dict(arch, seed, file_dtype), paths[s])
    memory_management.dtypes.update(DTYPE_DEFAULTS, **(dtypes or {}))
    memory_management.current_loaded_models.clear()
    script_callbacks.clear_callbacks()
    scripts.scripts_data.clear()
    shared.state = shared_state.State()
    shared.models_path = str(models)
    sd_models.model_path = str(models)
    sd_models.model_data.__init__()
    for k in [k for k in shared.opts.data if k.startswith("alloy_")]:
        del shared.opts.data[k]
    networks.available.clear()
    sd_models.list_models()
    info_a = next(i for i in sd_models.checkpoints_list.values() if i.filename == paths["a"])
    if load:
        shared.opts.data["sd_model_checkpoint"] = info_a.title
        main_entry.refresh_model_loading_parameters()
        if warmup:
            processing.process_images(processing.StableDiffusionProcessing(prompt="warm-up"))
    xyz = load_xyz()
    scripts.scripts_data.append(scripts.ScriptClassData(xyz.Script, "xyz_grid.py", str(A1111), xyz))
    return types.SimpleNamespace(tmp=Path(tmp_path), models=models, paths=paths, shared=shared, sd_models=sd_models,
                                 scripts=scripts, callbacks=script_callbacks, xyz=xyz, networks=networks,
                                 processing=processing, mm=memory_management, arch=arch)


def generate(loras=(), scripts_runner=None, **kw):
    """One txt2img through the stand-in's process_images; returns the Processed."""
    from modules import processing
    return processing.process_images(processing.StableDiffusionProcessing(loras=loras, scripts_runner=scripts_runner,
                                                                          **kw))


def load_checkpoint(path: str) -> None:
    """Select `path` in Forge's options and load it (what the checkpoint dropdown + a generation do)."""
    from modules import sd_models, shared
    from modules_forge import main_entry
    sd_models.list_models()
    shared.opts.data["sd_model_checkpoint"] = next(i.title for i in sd_models.checkpoints_list.values()
                                                   if i.filename == str(path))
    main_entry.refresh_model_loading_parameters()
    generate()
