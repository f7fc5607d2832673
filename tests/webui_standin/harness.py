"""Puts the WebUI stand-in on sys.path and builds a fresh "WebUI" world per test: tiny A/B/C
checkpoints in a models folder, model A loaded through the stand-in's sd_models."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch

STANDIN = Path(__file__).resolve().parent
REPO = STANDIN.parents[1]


def install() -> None:
    for p in (REPO, STANDIN / "lora", STANDIN):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    import modules
    if not str(getattr(modules, "__file__", "")).startswith(str(STANDIN)):
        raise RuntimeError("another 'modules' package shadows the WebUI stand-in")


def load_xyz():
    spec = importlib.util.spec_from_file_location("xyz_grid.py", STANDIN / "scripts" / "xyz_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CountingOpener:
    """merger.io.open_source, counting tensor reads per file name."""

    def __init__(self):
        self.reads: dict[str, int] = {}

    def __call__(self, path, label):
        from merger.io import open_source
        src = open_source(path, label)
        orig, name = src.read, Path(path).name

        def read(key, *a, **kw):
            self.reads[name] = self.reads.get(name, 0) + 1
            return orig(key, *a, **kw)
        src.read = read
        return src

    def total(self) -> int:
        return sum(self.reads.values())


def make_world(tmp_path, *, no_half=False, fp8=False, cache_fp16=False, vae=False, file_dtype=torch.float16):
    """Fresh stand-in state with A (seed 1), B (2), C (3) and model A loaded."""
    install()
    import networks
    import tinysd
    from modules import devices, script_callbacks, scripts, sd_models, sd_vae, shared, shared_state

    models = Path(tmp_path) / "models"
    models.mkdir(exist_ok=True)
    paths = {s: tinysd.write_checkpoint(models / f"{s.upper()}.safetensors", seed, file_dtype)
             for s, seed in (("a", 1), ("b", 2), ("c", 3))}
    vae_path = tinysd.write_vae(Path(tmp_path) / "other.vae.safetensors", 9) if vae else None
    script_callbacks.clear_callbacks()
    scripts.scripts_data.clear()
    shared.state = shared_state.State()
    shared.cmd_opts.no_half = no_half
    shared.cmd_opts.api_auth = None
    shared.opts.data.update({"fp8_storage": "Enable" if fp8 else "Disable", "cache_fp16_weight": cache_fp16,
                             "sd_model_checkpoint": None})
    for k in [k for k in shared.opts.data if k.startswith("alloy_")]:
        del shared.opts.data[k]
    shared.sd_model = None
    shared.models_path = str(models)
    sd_models.model_path = str(models)
    sd_models.model_data.sd_model = None
    sd_models.forced_vae["file"] = vae_path
    sd_vae.loaded_vae_file = None
    devices.fp8 = False
    networks.loaded_networks.clear()
    sd_models.list_models()
    info_a = next(i for i in sd_models.checkpoints_list.values() if i.filename == paths["a"])
    model = sd_models.load_model(info_a)
    networks.assign_network_names(model)
    xyz = load_xyz()
    scripts.scripts_data.append(scripts.ScriptClassData(xyz.Script, "xyz_grid.py", str(STANDIN), xyz))
    return types.SimpleNamespace(tmp=Path(tmp_path), models=models, paths=paths, model=model, shared=shared,
                                 sd_models=sd_models, scripts=scripts, callbacks=script_callbacks, xyz=xyz,
                                 networks=networks, vae=vae_path)


def checkpoint_key(name: str) -> str:
    """A state_dict name of the hijacked model → its checkpoint key (the hijack's `wrapped` dropped)."""
    return ".".join(part for part in name.split(".") if part != "wrapped")


def snapshot(model) -> dict:
    """Every parameter/buffer's bytes by checkpoint key (for bit-exact comparisons)."""
    return {checkpoint_key(k): v.detach().clone() for k, v in model.state_dict().items()}


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(
        x.contiguous().reshape(-1).view(torch.uint8), y.contiguous().reshape(-1).view(torch.uint8))


def diff_keys(s1: dict, s2: dict) -> set:
    return {k for k in s1 if not same_bits(s1[k], s2[k])}


def api_world(tmp_path):
    """A fresh stand-in world, a Session on the WebUI host and a TestClient over its REST API."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from merger.api import create_router
    from merger.session import Session
    from merger.webui import WebUIHost
    w = make_world(tmp_path)
    s = Session(WebUIHost(), str(tmp_path / "data"))
    app = FastAPI()
    app.include_router(create_router(s))
    return w, s, TestClient(app)
