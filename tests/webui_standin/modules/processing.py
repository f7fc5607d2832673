"""Stand-in of modules.processing: the processing object and process_images's order of calls
(before_process → reload_model_weights → sd_model name/hash → process → generate (prompt LoRAs are
applied to the weights like the Lora extension does on forward) → postprocess; infotext from
extra_generation_params)."""
import torch

from modules import scripts, sd_models, shared


class StableDiffusionProcessing:
    def __init__(self, prompt="", seed=-1, loras=(), scripts_runner=None):
        self.prompt = prompt
        self.seed = seed
        self.loras = list(loras)        # [(name, {layer_name: delta}, multiplier)], the prompt's <lora:…>
        self.extra_generation_params = {}
        self.override_settings = {}
        self.scripts = scripts_runner
        self.script_args = ()
        self.sd_model_name = None
        self.sd_model_hash = None
        self.styles = []


class Processed:
    def __init__(self, p, infotext, weights_seen):
        self.images = [] if weights_seen is None else [weights_seen]
        self.seed = p.seed
        self.prompt = p.prompt
        self.infotexts = [infotext]


def create_infotext(p):
    fields = {"Seed": p.seed, "Model hash": p.sd_model_hash, "Model": p.sd_model_name}
    fields.update(p.extra_generation_params)
    return ", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None)


def process_images(p):
    """Like the WebUI: before_process runs before override_settings are applied, and the overridden
    options are put back after this one generation (override_settings_restore_afterwards)."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored = {k: shared.opts.data[k] for k in p.override_settings if k in shared.opts.data}
    try:
        return _process_images(p)
    finally:
        for k, v in stored.items():
            setattr(shared.opts, k, v)


def _process_images(p):
    if sd_models.checkpoint_aliases.get(p.override_settings.get("sd_model_checkpoint")) is None:
        p.override_settings.pop("sd_model_checkpoint", None)
        sd_models.reload_model_weights()
    for k, v in p.override_settings.items():
        shared.opts.set(k, v)
        if k == "sd_model_checkpoint":
            sd_models.reload_model_weights()
    model = shared.sd_model
    p.sd_model_name = model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = model.sd_model_hash
    if p.scripts is not None:
        p.scripts.process(p)
    if shared.state.interrupted:        # process_images_inner's batch loop breaks: no images
        return Processed(p, "", None)
    import networks
    networks.load_networks(p.loras)
    networks.apply_to_model(model)      # what the hijacked forward of each layer does
    seen = {".".join(n for n in k.split(".") if n != "wrapped"): v.detach().clone()   # by checkpoint key
            for k, v in model.state_dict().items()}
    res = Processed(p, create_infotext(p), seen)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
