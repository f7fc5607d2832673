"""Stand-in of modules.sd_vae: load a separate VAE file into first_stage_model."""
from safetensors.torch import load_file

from modules import devices

loaded_vae_file = None


def load_vae(model, vae_file=None, vae_source="from settings"):
    global loaded_vae_file
    if vae_file is None:
        return
    sd = load_file(vae_file)
    model.first_stage_model.load_state_dict(sd, strict=False)
    model.first_stage_model.to(devices.dtype_vae)
    loaded_vae_file = vae_file
