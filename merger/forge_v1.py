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
merged weights. The WebUI call itself is the adapter's (merger/webui.py `unpatch_all`): this
module imports nothing of the WebUI."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from .live_module import ModuleLive, reset_lora_state


def detected(model) -> bool:
    """True for a reForge / Forge Classic model object (A1111's, with `forge_objects`)."""
    return getattr(model, "forge_objects", None) is not None


class ForgeV1Live(ModuleLive):
    """`unpatch()`: takes every loaded ModelPatcher's patches off (the WebUI's unload_all_models)."""

    def __init__(self, model, unpatch: Callable[[], None]):
        super().__init__(model)
        self.unpatch = unpatch

    @contextlib.contextmanager
    def writing(self):
        with torch.inference_mode():
            self.unpatch()
            reset_lora_state(self.model)
            yield
