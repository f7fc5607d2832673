"""The Forge-v1 lineage: reForge (Panchovix) and Forge Classic (Haoming02), gradio 3.41.2.

They keep AUTOMATIC1111's model object and module tree (so merger/webui.py's Host and ModuleLive's
checkpoint names hold) but attach Forge's `ldm_patched` ModelPatchers as `sd_model.forge_objects`,
and prompt LoRAs are not the Lora extension's per-module `network_weights_backup`: the extension
clones `forge_objects_original.unet/clip` and adds the LoRA as patches; when a generation loads that
clone (model_management.load_models_gpu, under inference_mode) it swaps patched Parameters into
the modules and keeps the replaced ones in the patcher's `backup` dict (shared by all clones) until
the next patcher with other patches is loaded or the model is unloaded.

Writing over the patched Parameters would fail (they are inference tensors) and, worse, the next
un-patch would put the pre-merge Parameters back. So before every write the WebUI's own
`model_management.unload_all_models()` takes the patches off (the backups go back, the dict is
emptied), and writes run under inference_mode. The next generation patches the LoRA on top of the
merged weights."""
from __future__ import annotations

import contextlib

import torch

from .live_module import ModuleLive, reset_lora_state


def detected(model) -> bool:
    """True for a reForge / Forge Classic model object (A1111's, with `forge_objects`)."""
    return getattr(model, "forge_objects", None) is not None


def unpatch_all() -> None:
    """Put every loaded ModelPatcher's backed-up Parameters back (ldm_patched's model_management)."""
    from ldm_patched.modules import model_management
    model_management.unload_all_models()


class ForgeV1Live(ModuleLive):
    @contextlib.contextmanager
    def writing(self):
        with torch.inference_mode():
            unpatch_all()
            reset_lora_state(self.model)
            yield
