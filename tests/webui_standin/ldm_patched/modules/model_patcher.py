"""Stand-in of ldm_patched/modules/model_patcher.py (reForge 3b56b268; Forge Classic alike), the
part a prompt LoRA uses, written from reading its source.

ModelPatcher(model): `patches` (key → list of (strength, delta)), `backup` (key → the replaced
Parameter; one dict shared by every clone), `patches_uuid`. Loading (`load`) first un-patches when
the model carries another patcher's patches (model.current_weight_patches_uuid), then for each
patched key backs up the live Parameter (`weight.to(offload_device, copy=False)`: the same object
on CPU) and sets a new Parameter holding weight + strength * delta (set_attr_param). unpatch_model
puts the backed-up Parameters back and empties the dict."""
import uuid

import torch


def get_attr(obj, key):
    for name in key.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr_param(obj, key, value):
    *path, last = key.split(".")
    for name in path:
        obj = getattr(obj, name)
    setattr(obj, last, torch.nn.Parameter(value, requires_grad=False))


class ModelPatcher:
    def __init__(self, model, offload_device=torch.device("cpu")):
        self.model = model
        self.offload_device = offload_device
        self.patches = {}
        self.backup = {}
        self.patches_uuid = uuid.uuid4()
        if not hasattr(model, "current_weight_patches_uuid"):
            model.current_weight_patches_uuid = None

    def clone(self):
        n = ModelPatcher(self.model, self.offload_device)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.backup = self.backup
        return n

    def is_clone(self, other):
        return getattr(other, "model", None) is self.model

    def add_patches(self, deltas, strength=1.0):
        for key, delta in deltas.items():
            self.patches.setdefault(key, []).append((strength, delta))
        self.patches_uuid = uuid.uuid4()
        return set(deltas)

    def load(self):
        if self.model.current_weight_patches_uuid not in (None, self.patches_uuid):
            self.unpatch_model()
        if self.model.current_weight_patches_uuid == self.patches_uuid:
            return
        for key, patches in self.patches.items():
            weight = get_attr(self.model, key)
            if key not in self.backup:
                self.backup[key] = weight.to(device=self.offload_device, copy=False)
            out = weight.float()
            for strength, delta in patches:
                out = out + strength * delta.float()
            set_attr_param(self.model, key, out.to(weight.dtype))
        self.model.current_weight_patches_uuid = self.patches_uuid

    def unpatch_model(self):
        for key, weight in self.backup.items():
            set_attr_param(self.model, key, weight)
        self.backup.clear()
        self.model.current_weight_patches_uuid = None
