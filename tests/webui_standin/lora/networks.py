"""Stand-in of extensions-builtin/Lora/networks.py (v1.10.1): per-module weight/bias backups.

network_apply_weights(module): when the wanted LoRA set differs from `network_current_names`,
restore the backup (taken on first use, when no backup exists), then add each LoRA's delta.
Loading weights through load_state_dict resets the cache (network_reset_cached_weight)."""
import torch

loaded_networks = []


class LoadedNetwork:
    def __init__(self, name, deltas, multiplier):
        self.name, self.deltas, self.te_multiplier, self.unet_multiplier, self.dyn_dim = name, deltas, multiplier, multiplier, None


def load_networks(loras):
    loaded_networks.clear()
    for name, deltas, mult in loras:
        loaded_networks.append(LoadedNetwork(name, deltas, mult))


def assign_network_names(model):
    for name, module in model.named_modules():
        module.network_layer_name = name.replace(".", "_")


def _store(t):
    return None if t is None else t.to("cpu", copy=True)


def _restore(obj, attr, backup):
    if backup is None:
        setattr(obj, attr, None)
    else:
        getattr(obj, attr).copy_(backup)


def network_restore_weights_from_backup(self):
    wb = getattr(self, "network_weights_backup", None)
    bb = getattr(self, "network_bias_backup", None)
    if wb is None and bb is None:
        return
    mha = isinstance(self, torch.nn.MultiheadAttention)
    if wb is not None:
        if mha:
            _restore(self, "in_proj_weight", wb[0])
            _restore(self.out_proj, "weight", wb[1])
        else:
            _restore(self, "weight", wb)
    _restore(self.out_proj if mha else self, "bias", bb)


def network_apply_weights(self):
    layer = getattr(self, "network_layer_name", None)
    if layer is None:
        return
    current = getattr(self, "network_current_names", ())
    wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in loaded_networks)
    mha = isinstance(self, torch.nn.MultiheadAttention)
    wb = getattr(self, "network_weights_backup", None)
    if wb is None and wanted != ():
        if current != ():
            raise RuntimeError(f"{layer} - no backup weights found and current weights are not unchanged")
        wb = (_store(self.in_proj_weight), _store(self.out_proj.weight)) if mha else _store(self.weight)
        self.network_weights_backup = wb
    bb = getattr(self, "network_bias_backup", None)
    if bb is None and wanted != ():
        bias = self.out_proj.bias if mha else getattr(self, "bias", None)
        bb = _store(bias)
        if bb is not None and current != ():
            raise RuntimeError("no backup bias found and current bias are not unchanged")
        self.network_bias_backup = bb
    if current != wanted:
        network_restore_weights_from_backup(self)
        with torch.no_grad():
            for net in loaded_networks:
                delta = net.deltas.get(layer)
                if delta is None:
                    continue
                target = self.in_proj_weight if mha else self.weight
                target.copy_((target.float() + delta.float() * net.unet_multiplier).to(target.dtype))
        self.network_current_names = wanted


def apply_to_model(model):
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.MultiheadAttention)):
            network_apply_weights(module)
