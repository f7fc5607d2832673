"""Stand-in of backend/patcher/lora.py: LoraLoader.refresh and merge_lora_to_weight.

refresh(lora_patches): nothing when the patch list's hash equals `loaded_hash`; else put every
backed-up Parameter object back (set_attr_raw), forget the backups, then for each patched key back
up the current Parameter (on CPU: the object itself) and install a *new* Parameter holding the
patched weight. A stand-in patch is [strength, delta, strength_model, offset, function]."""
import torch

from backend import memory_management, utils


def merge_lora_to_weight(patches, weight, key="online_lora", computation_dtype=torch.float32):
    out = weight.to(dtype=computation_dtype, copy=True)
    for strength, delta, strength_model, offset, function in patches:
        if strength_model != 1.0:
            out *= strength_model
        out += strength * delta.to(device=out.device, dtype=computation_dtype)
    return out.to(dtype=weight.dtype)


class LoraLoader:
    def __init__(self, model):
        self.model = model
        self.backup = {}
        self.online_backup = []
        self.loaded_hash = str([])

    @torch.inference_mode()
    def refresh(self, lora_patches, offload_device=torch.device("cpu"), force_refresh=False):
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        all_patches = {}
        for (_, _, _, online_mode), patches in lora_patches.items():
            for key, current in patches.items():
                all_patches[(key, online_mode)] = all_patches.get((key, online_mode), []) + current
        memory_management.signal_empty_cache = True
        for m in set(self.online_backup):
            del m.forge_online_loras
        self.online_backup = []
        for k, w in self.backup.items():
            if not isinstance(w, torch.nn.Parameter):
                w = torch.nn.Parameter(w, requires_grad=False)
            utils.set_attr_raw(self.model, k, w)
        self.backup = {}
        for (key, online_mode), current in all_patches.items():
            parent, child, weight = utils.get_attr_with_parent(self.model, key)
            assert isinstance(weight, torch.nn.Parameter), key
            if online_mode:
                if not hasattr(parent, "forge_online_loras"):
                    parent.forge_online_loras = {}
                parent.forge_online_loras[child] = current
                self.online_backup.append(parent)
                continue
            if key not in self.backup:
                self.backup[key] = weight.to(device=offload_device)
            weight = merge_lora_to_weight(current, weight, key, computation_dtype=torch.float32)
            utils.set_attr_raw(self.model, key, torch.nn.Parameter(weight, requires_grad=False))
        self.loaded_hash = hashes
