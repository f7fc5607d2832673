"""Stand-in of modules.shared: opts, state, cmd_opts, sd_model."""
import types

from modules import shared_state
from modules.options import OptionInfo, Options  # noqa: F401  (the WebUI re-exports OptionInfo here)

cmd_opts = types.SimpleNamespace(no_half=False, no_half_vae=False, ckpt_dir=None, lowvram=False,
                                 medvram=False, api=True, api_auth=None)
models_path = ""
data_path = ""
opts = Options({
    "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint"),
    "sd_checkpoint_hash": OptionInfo("", "SHA256 hash of the current checkpoint"),
    "fp8_storage": OptionInfo("Disable", "FP8 weight"),
    "cache_fp16_weight": OptionInfo(False, "Cache FP16 weight for LoRA"),
    "add_model_hash_to_info": OptionInfo(True, "Add model hash to infotext"),
    "add_model_name_to_info": OptionInfo(True, "Add model name to infotext"),
})
state = shared_state.State()
sd_model = None
device = "cpu"
