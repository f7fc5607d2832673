"""The adapter to Stable Diffusion WebUI Forge (lllyasviel/stable-diffusion-webui-forge: gradio 4,
its `backend/` engine). Imports `modules.*` / `backend.*` only inside functions; the checkpoint
key → live name rules are WebUI-free in merger/forge_keys.py. scripts/alloy.py calls `register()`
when `detected()`.

What differs from AUTOMATIC1111 (merger/webui.py, whose Host this extends):
  - `shared.sd_model` is a ForgeDiffusionEngine (not an nn.Module; a FakeInitialModel until the
    first generation loads the checkpoint); its file is `.filename`. Loading model A is Forge's
    way: `opts.sd_model_checkpoint`, `main_entry.refresh_model_loading_parameters()`,
    `sd_models.forge_model_reload()` (the caller already holds the generation queue).
  - Weights live in `forge_objects_original` (UnetPatcher/KModel, CLIP/JointTextEncoder in
    Hugging Face layout, VAE), loaded under inference_mode: writes run under inference_mode too.
  - The LoRA loader (`module.lora_loader`, backend/patcher/lora.py) swaps Parameters and keeps
    the originals as backups: before writing its patches are taken off (`refresh({})`), after
    writing `current_lora_hash` is invalidated so the next generation re-applies prompt LoRAs on
    the merged weights.
  - Token/position embeddings are fp32 after the first generation but were loaded through the
    text encoder's storage dtype: writes round through it. nf4/fp4/GGUF weights are refused."""
from __future__ import annotations

import contextlib
import importlib.util

import torch

from .errors import AlloyError
from .forge_keys import encoder_of, is_embedding, live_name
from .live_module import LiveModel
from .live_targets import Target, checkpoint_name, owner_map
from .session import same_file
from .settings import Settings
from .webui import WebUIHost, checkpoint_info, read_settings, register as register_webui

LORA_HASH_INVALID = "alloy: weights merged, re-apply LoRAs"
CACHE_RESERVE = 3 << 30      # RAM left to Forge (inference, loading) when sizing the source cache


def detected() -> bool:
    """True inside Forge 2 (`modules_forge` and the `backend.diffusion_engine` package)."""
    try:
        return (importlib.util.find_spec("modules_forge") is not None
                and importlib.util.find_spec("backend.diffusion_engine") is not None)
    except (ImportError, ValueError):
        return False


def _quantised(t: torch.Tensor) -> str | None:
    """"nf4/fp4" (bitsandbytes ForgeParams4bit), "GGUF" (ParameterGGUF) or None."""
    if getattr(t, "bnb_quantized", None) is not None or type(t).__name__ == "ForgeParams4bit":
        return "nf4/fp4"
    if getattr(t, "gguf_cls", None) is not None or type(t).__name__ == "ParameterGGUF":
        return "GGUF"
    return None


class ForgeLive(LiveModel):
    """A loaded ForgeDiffusionEngine as a live model."""

    def __init__(self, engine):
        self.engine = engine

    def _roots(self) -> dict:
        objs = self.engine.forge_objects_original
        unet, clip, vae = (getattr(objs, n, None) for n in ("unet", "clip", "vae"))
        return {"unet": getattr(unet, "model", None), "clip": getattr(clip, "cond_stage_model", None),
                "vae": getattr(vae, "first_stage_model", None)}

    def targets(self, keys) -> dict[str, Target]:
        owners = {c: owner_map(root) for c, root in self._roots().items() if root is not None}
        storage: dict[str, torch.dtype | None] = {}
        out = {}
        for key in keys:
            where = live_name(key)
            table = owners.get(where.component)
            if table is None or any(n not in table for n in where.names):
                continue
            slots = tuple(table[n] for n in where.names)
            via = None
            if where.component == "clip" and is_embedding(where.names[0]):
                enc = encoder_of(where.names[0])
                if enc not in storage:
                    storage[enc] = _storage_dtype(table, where.names[0])
                via = storage[enc]
            kinds = {_quantised(getattr(m, a)) for m, a in slots} - {None}
            refuse = (f"The loaded model stores {key} as {kinds.pop()} quantised weights, which Alloy cannot "
                      "merge into live; load an fp16/fp8 version of model A or merge to a file.") if kinds else None
            out[key] = Target(slots, transpose=where.transpose, via=via, refuse=refuse)
        return out

    @contextlib.contextmanager
    def writing(self):
        with torch.inference_mode():
            reset_loras(self.engine)
            try:
                yield
            finally:
                self.engine.current_lora_hash = LORA_HASH_INVALID


def _storage_dtype(table: dict, name: str) -> torch.dtype | None:
    """The storage dtype of the text encoder holding embedding `name`: the dtype of its other
    floating weights (Forge's loader rounds the embeddings through it before making them fp32)."""
    enc = encoder_of(name) + "."
    for n, (module, attr) in table.items():
        if n.startswith(enc) and not is_embedding(checkpoint_name(n)) and attr == "weight":
            t = getattr(module, attr)
            if t is not None and t.is_floating_point() and _quantised(t) is None:
                return t.dtype
    return None


def reset_loras(engine) -> None:
    """Take the prompt LoRAs' patches off the weights: each LoraLoader (shared by a patcher and
    its clones) puts its backed-up original Parameters back and forgets them."""
    objs = engine.forge_objects_original
    for patcher in (getattr(objs, "unet", None), getattr(getattr(objs, "clip", None), "patcher", None)):
        loader = getattr(getattr(patcher, "model", None), "lora_loader", None)
        if loader is not None:
            loader.refresh({}, offload_device=getattr(patcher, "offload_device", torch.device("cpu")))


class ForgeHost(WebUIHost):
    """Forge's checkpoints (A1111's list), its lazily loaded engine, its LoRA loader."""

    def sd_model(self):
        from modules import shared
        model = shared.sd_model
        return model if getattr(model, "forge_objects_original", None) is not None else None

    def live_model(self):
        engine = self.sd_model()
        return None if engine is None else ForgeLive(engine)

    def loaded_model_path(self) -> str | None:
        return getattr(self.sd_model(), "filename", None)

    def load_model(self, path: str) -> None:
        """Load `path` the way Forge's checkpoint dropdown does (the caller holds the queue)."""
        from modules import sd_models, shared
        from modules_forge import main_entry
        info = checkpoint_info(path)
        super().forget()               # no reference to the old engine, no cached tensors while loading
        self._drop_cache(close_files=False)     # (the merge's sources stay open)
        shared.opts.set("sd_model_checkpoint", info.title, run_callbacks=False)
        main_entry.refresh_model_loading_parameters()
        sd_models.forge_model_reload()
        if not same_file(self.loaded_model_path(), path):
            raise AlloyError(f"Forge could not load {path} as the merge base (model A).")

    def forget(self) -> None:
        """Another checkpoint was loaded: drop the old engine's info and the cache."""
        super().forget()
        self._drop_cache(close_files=True)

    def _drop_cache(self, close_files: bool) -> None:
        cache = self.session.cache if self.session is not None else None
        if cache is None:
            return
        if close_files:
            cache.clear()
        else:
            budget = cache.stats().budget
            cache.set_budget(0)
            cache.set_budget(budget)

    def read_settings(self) -> Settings:
        """The settings, with the cache budget capped to what RAM allows beside Forge's model."""
        settings = read_settings()
        try:
            import psutil
            free = psutil.virtual_memory().available
        except (ImportError, OSError):
            return settings
        used = self.session.cache.stats().bytes if self.session is not None else 0
        cap_gb = max(0.0, (free + used - CACHE_RESERVE) / (1 << 30))
        return settings.replace(cache_gb=round(min(settings.cache_gb, cap_gb), 2))


def register(data_dir: str | None = None):
    """merger.webui.register with Forge's host."""
    return register_webui(data_dir, host_class=ForgeHost)
