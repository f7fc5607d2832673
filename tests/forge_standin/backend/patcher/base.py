"""Stand-in of backend/patcher/base.py ModelPatcher: the LoraLoader lives on the module and is
shared by every clone; clone() copies the patch lists; add_patches keeps keys the module has."""
import copy

from backend import memory_management, utils
from backend.patcher.lora import LoraLoader


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, current_device=None, **kwargs):
        self.size = size
        self.model = model
        self.lora_patches = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.load_device = load_device
        self.offload_device = offload_device
        if not hasattr(model, "lora_loader"):
            model.lora_loader = LoraLoader(model)
        self.lora_loader = model.lora_loader
        self.current_device = offload_device if current_device is None else current_device

    def clone(self):
        n = type(self)(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        lora_identifier = (filename, strength_patch, strength_model, online_mode)
        this_patches, p = {}, set()
        model_keys = set(k for k, _ in self.model.named_parameters())
        for key in patches:
            if key in model_keys:
                p.add(key)
                this_patches.setdefault(key, []).append([strength_patch, patches[key], strength_model, None, None])
        self.lora_patches[lora_identifier] = this_patches
        return p

    def refresh_loras(self):
        self.lora_loader.refresh(lora_patches=self.lora_patches, offload_device=self.offload_device)

    def forge_patch_model(self, target_device=None):
        for k, item in self.object_patches.items():
            self.object_patches_backup.setdefault(k, utils.get_attr(self.model, k))
            utils.set_attr_raw(self.model, k, item)
        if target_device is not None:
            self.model.to(target_device)
            self.current_device = target_device
        return self.model

    def forge_unpatch_model(self, target_device=None):
        if target_device is not None:
            self.model.to(target_device)
            self.current_device = target_device
        for k, v in self.object_patches_backup.items():
            utils.set_attr_raw(self.model, k, v)
        self.object_patches_backup = {}


def make(model):
    """A patcher on CPU (load and offload device)."""
    return ModelPatcher(model, memory_management.cpu, memory_management.cpu)
