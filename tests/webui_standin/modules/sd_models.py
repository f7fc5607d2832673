"""Stand-in of modules.sd_models (v1.10.1 semantics that Alloy relies on):
CheckpointInfo / checkpoints_list / aliases, select_checkpoint, load_model,
reload_model_weights (no-op when the same file is loaded), and load_model_weights with the
WebUI's precision handling: half() unless --no-half (VAE kept with --no-half-vae), fp8 storage
of Linear/Conv2d weights outside the VAE (optionally caching fp16 copies), VAE to dtype_vae;
then the text-encoder hijack (sd_hijack.py), undone before a reload."""
import copy
import hashlib
import os
import types

import torch
from safetensors.torch import load_file

from modules import devices, script_callbacks, sd_hijack, sd_vae, shared

checkpoints_list = {}
checkpoint_aliases = {}
model_data = types.SimpleNamespace(sd_model=None, loaded_sd_models=[])
forced_vae = {"file": None}    # tests set a VAE file to load after the checkpoint
load_count = {"n": 0}


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        name = os.path.basename(filename)
        self.is_safetensors = filename.lower().endswith(".safetensors")
        self.metadata = {}
        self.name = name
        self.name_for_extra = os.path.splitext(name)[0]
        self.model_name = os.path.splitext(name.replace("/", "_"))[0]
        self.hash = None
        self.sha256 = _sha256(filename)
        self.shorthash = self.sha256[:10]
        self.title = f"{name} [{self.shorthash}]"
        self.short_title = f"{self.name_for_extra} [{self.shorthash}]"
        self.ids = [self.model_name, self.title, name, self.name_for_extra, self.shorthash, self.sha256]

    def register(self):
        checkpoints_list[self.title] = self
        for i in self.ids:
            checkpoint_aliases[i] = self

    def calculate_shorthash(self):
        return self.shorthash


def list_models():
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    root = shared.models_path
    for fn in sorted(os.listdir(root)) if root and os.path.isdir(root) else []:
        if fn.endswith((".safetensors", ".ckpt")):
            CheckpointInfo(os.path.join(root, fn)).register()


def checkpoint_tiles(use_short=False):
    return [x.short_title if use_short else x.title for x in checkpoints_list.values()]


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    info = checkpoint_aliases.get(search_string)
    if info is not None:
        return info
    found = sorted([i for i in checkpoints_list.values() if search_string in i.title], key=lambda x: len(x.title))
    return found[0] if found else None


def select_checkpoint():
    info = checkpoint_aliases.get(shared.opts.sd_model_checkpoint)
    if info is not None:
        return info
    return next(iter(checkpoints_list.values()), None)


def read_state_dict(checkpoint_file):
    return load_file(checkpoint_file)


def load_model_weights(model, checkpoint_info, state_dict):
    sd_model_hash = checkpoint_info.calculate_shorthash()
    if devices.fp8:
        model.half()
    shared.opts.data["sd_model_checkpoint"] = checkpoint_info.title
    if state_dict is None:
        state_dict = read_state_dict(checkpoint_info.filename)
    model.load_state_dict(state_dict, strict=False)
    if shared.cmd_opts.no_half:
        model.float()
        devices.dtype_unet = torch.float32
    else:
        vae = model.first_stage_model
        if shared.cmd_opts.no_half_vae:
            model.first_stage_model = None
        model.half()
        model.first_stage_model = vae
        devices.dtype_unet = torch.float16
    for module in model.modules():
        for attr in ("fp16_weight", "fp16_bias"):
            if hasattr(module, attr):
                delattr(module, attr)
    if shared.opts.fp8_storage == "Enable":
        devices.fp8 = True
        first_stage = model.first_stage_model
        model.first_stage_model = None
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                if shared.opts.cache_fp16_weight:
                    module.fp16_weight = module.weight.data.clone().cpu().half()
                    if module.bias is not None:
                        module.fp16_bias = module.bias.data.clone().cpu().half()
                module.to(torch.float8_e4m3fn)
        model.first_stage_model = first_stage
    else:
        devices.fp8 = False
    model.first_stage_model.to(torch.float32 if shared.cmd_opts.no_half or shared.cmd_opts.no_half_vae else devices.dtype_vae)
    model.sd_model_hash = sd_model_hash
    model.sd_model_checkpoint = checkpoint_info.filename
    model.sd_checkpoint_info = checkpoint_info
    shared.opts.data["sd_checkpoint_hash"] = checkpoint_info.sha256
    sd_vae.load_vae(model, forced_vae["file"])
    load_count["n"] += 1


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    import tinysd

    checkpoint_info = checkpoint_info or select_checkpoint()
    model = tinysd.build_model()
    load_model_weights(model, checkpoint_info, already_loaded_state_dict)
    sd_hijack.model_hijack.hijack(model)
    model_data.sd_model = model
    shared.sd_model = model
    script_callbacks.model_loaded_callback(model)
    return model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    checkpoint_info = info or select_checkpoint()
    sd_model = sd_model or model_data.sd_model
    if sd_model is None:
        return load_model(checkpoint_info)
    if sd_model.sd_model_checkpoint == checkpoint_info.filename and not forced_reload:
        return sd_model
    sd_hijack.model_hijack.undo_hijack(sd_model)
    load_model_weights(sd_model, checkpoint_info, None)
    sd_hijack.model_hijack.hijack(sd_model)
    script_callbacks.model_loaded_callback(sd_model)
    model_data.sd_model = sd_model
    shared.sd_model = sd_model
    return sd_model


def copy_info(info):
    return copy.copy(info)
