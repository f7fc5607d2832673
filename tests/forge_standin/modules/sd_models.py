"""Stand-in of Forge's modules.sd_models: the checkpoint list of A1111 (CheckpointInfo, aliases,
select_checkpoint: taken from the A1111 stand-in), Forge's SdModelData (FakeInitialModel until the
first load, forge_loading_parameters, forge_hash) and forge_model_reload() (inference_mode; drops
the old engine, forge_loader, sets sd_checkpoint_info / filename / sd_model_hash, fires
model_loaded). load_model / reload_model_weights are no-ops, as in Forge."""
import gc
import importlib.util
import os
import weakref

import torch

from modules import script_callbacks, shared

_spec = importlib.util.spec_from_file_location(
    "modules._a1111_sd_models", os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "webui_standin",
                                              "modules", "sd_models.py"))
_a1111 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_a1111)
CheckpointInfo, checkpoints_list, checkpoint_aliases = _a1111.CheckpointInfo, _a1111.checkpoints_list, \
    _a1111.checkpoint_aliases
list_models, checkpoint_tiles = _a1111.list_models, _a1111.checkpoint_tiles
get_closet_checkpoint_match, select_checkpoint = _a1111.get_closet_checkpoint_match, _a1111.select_checkpoint
load_count = {"n": 0}
freed_before_load = {"last": None}


class FakeInitialModel:
    def __init__(self):
        self.cond_stage_model = None
        self.chunk_length = 75


class SdModelData:
    def __init__(self):
        self.sd_model = FakeInitialModel()
        self.forge_loading_parameters = {}
        self.forge_hash = ""

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, v):
        self.sd_model = v


model_data = SdModelData()


def load_model(*args, **kwargs):
    pass


def reload_model_weights(*args, **kwargs):
    pass


@torch.inference_mode()
def forge_model_reload():
    from backend import memory_management
    from backend.loader import forge_loader
    current_hash = str(model_data.forge_loading_parameters)
    if model_data.forge_hash == current_hash:
        return model_data.sd_model, False
    if model_data.sd_model:
        old = weakref.ref(model_data.sd_model)
        model_data.sd_model = None
        memory_management.unload_all_models()
        gc.collect()
        freed_before_load["last"] = old() is None     # tests: nobody else kept the old engine alive
    checkpoint_info = model_data.forge_loading_parameters["checkpoint_info"]
    sd_model = forge_loader(checkpoint_info.filename)
    sd_model.sd_checkpoint_info = checkpoint_info
    sd_model.filename = checkpoint_info.filename
    sd_model.sd_model_hash = checkpoint_info.calculate_shorthash()
    shared.opts.data["sd_checkpoint_hash"] = checkpoint_info.sha256
    model_data.set_sd_model(sd_model)
    load_count["n"] += 1
    script_callbacks.model_loaded_callback(sd_model)
    model_data.forge_hash = current_hash
    return sd_model, True
