"""Stand-in of modules_forge/main_entry.py refresh_model_loading_parameters."""
from modules import processing, shared


def refresh_model_loading_parameters():
    from modules.sd_models import model_data, select_checkpoint
    model_data.forge_loading_parameters = dict(checkpoint_info=select_checkpoint(),
                                               additional_modules=shared.opts.forge_additional_modules,
                                               unet_storage_dtype=None)
    processing.need_global_unload = True
