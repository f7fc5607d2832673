"""Stand-in of backend/memory_management.py (CPU, --always-cpu): storage dtypes per component,
the list of loaded models and load_models_gpu, whose LoadedModel.model_load ends with the
patcher's refresh_loras() (where the LoRA loader swaps Parameters). A model already in
current_loaded_models (same patcher object) is not loaded again, so its LoRAs are not refreshed."""
import torch

cpu = torch.device("cpu")
# What unet_dtype()/text_encoder_dtype()/vae_dtype() answer on CPU; tests change them like Forge's
# --unet-in-* / --clip-in-* flags or "Diffusion in Low Bits".
dtypes = {"unet": torch.float32, "text_encoder": torch.float16, "vae": torch.float32}
current_loaded_models = []
signal_empty_cache = False


def unet_dtype(*args, **kwargs):
    return dtypes["unet"]


def text_encoder_dtype(device=None):
    return dtypes["text_encoder"]


def vae_dtype(device=None, allowed_dtypes=()):
    return dtypes["vae"]


def get_torch_device():
    return cpu


def soft_empty_cache(force=False):
    pass


class LoadedModel:
    def __init__(self, model):
        self.model = model
        self.device = model.load_device

    def model_load(self):
        self.real_model = self.model.forge_patch_model(self.device)
        self.model.refresh_loras()
        return self.real_model

    def model_unload(self, avoid_model_moving=False):
        self.model.forge_unpatch_model(None if avoid_model_moving else self.model.offload_device)

    def __eq__(self, other):
        return self.model is other.model


def unload_model_clones(model):
    for i in reversed(range(len(current_loaded_models))):
        if model.is_clone(current_loaded_models[i].model):
            current_loaded_models.pop(i).model_unload(avoid_model_moving=True)


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    for x in models:
        loaded = LoadedModel(x)
        if loaded in current_loaded_models:
            current_loaded_models.insert(0, current_loaded_models.pop(current_loaded_models.index(loaded)))
            continue
        unload_model_clones(x)
        loaded.model_load()
        current_loaded_models.insert(0, loaded)


def load_model_gpu(model):
    return load_models_gpu([model])


def unload_all_models():
    while current_loaded_models:
        current_loaded_models.pop().model_unload()
