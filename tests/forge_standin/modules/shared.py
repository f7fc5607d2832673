"""Stand-in of Forge's modules.shared: opts (with Forge's loading options), state, cmd_opts, and
`sd_model` read from sd_models.model_data (Forge's Shared.sd_model property)."""
import types

from modules import shared_state
from modules.options import OptionInfo, Options  # noqa: F401  (the WebUI re-exports OptionInfo here)

cmd_opts = types.SimpleNamespace(ckpt_dir=None, api=True, lora_dir="")
models_path = ""
data_path = ""
opts = Options({
    "sd_model_checkpoint": OptionInfo(None, "(Managed by Forge)"),
    "sd_checkpoint_hash": OptionInfo("", "SHA256 hash of the current checkpoint"),
    "forge_additional_modules": OptionInfo([], "VAE / Text Encoder"),
    "forge_unet_storage_dtype": OptionInfo("Automatic", "Diffusion in Low Bits"),
})
state = shared_state.State()
device = "cpu"


def __getattr__(name):
    if name == "sd_model":
        from modules import sd_models
        return sd_models.model_data.get_sd_model()
    raise AttributeError(name)
