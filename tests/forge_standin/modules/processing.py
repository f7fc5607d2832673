"""Stand-in of Forge's modules.processing: process_images's order of calls — scripts'
before_process, override settings, manage_model_and_prompt_cache (forge_model_reload), model
name/hash, scripts' process, then under inference_mode: forge_objects = original.shallow_copy(),
extra networks (prompt LoRAs: networks.load_networks), forge_objects = after_applying_lora,
conditioning (CLIP patcher loaded: its LoRAs refreshed; text engines turn embeddings to fp32),
sampling (UNet patcher loaded), decoding (VAE patcher loaded). The "image" is every tensor the
components hold at sampling time, by component and live name."""
import importlib.util
import os

import torch

from modules import sd_models, shared

_spec = importlib.util.spec_from_file_location(
    "modules._a1111_processing", os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "webui_standin",
                                               "modules", "processing.py"))
_a1111 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_a1111)
# the processing object (its `loras`: [(name, multiplier)], the prompt's <lora:name:multiplier>),
# Processed and the infotext are A1111's
StableDiffusionProcessing, Processed, create_infotext = (_a1111.StableDiffusionProcessing, _a1111.Processed,
                                                         _a1111.create_infotext)
need_global_unload = False


def manage_model_and_prompt_cache(p):
    global need_global_unload
    from backend import memory_management
    p.sd_model, just_reloaded = sd_models.forge_model_reload()
    if need_global_unload and not just_reloaded:
        memory_management.unload_all_models()
    need_global_unload = False


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored = {k: shared.opts.data[k] for k in p.override_settings if k in shared.opts.data}
    try:
        for k, v in p.override_settings.items():
            shared.opts.set(k, v, run_callbacks=False)
        manage_model_and_prompt_cache(p)
        return _process_images_inner(p)
    finally:
        for k, v in stored.items():
            setattr(shared.opts, k, v)


def image_of(engine) -> dict:
    """Every tensor of the engine's current components: {"unet.<name>": tensor, …} (copies)."""
    objs = engine.forge_objects
    roots = {"unet": objs.unet.model, "clip": objs.clip.cond_stage_model, "vae": objs.vae.first_stage_model}
    return {f"{c}.{k}": v.detach().clone() for c, root in roots.items() for k, v in root.state_dict().items()}


def _process_images_inner(p):
    from backend import memory_management
    import networks
    model = p.sd_model
    p.sd_model_name = model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = model.sd_model_hash
    if p.scripts is not None:
        p.scripts.process(p)
    if shared.state.interrupted:
        return Processed(p, "", None)
    with torch.inference_mode():
        model.forge_objects = model.forge_objects_original.shallow_copy()
        networks.load_networks(p.loras)
        model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()
        model.get_learned_conditioning([p.prompt])
        memory_management.load_models_gpu([model.forge_objects.unet])
        image = image_of(model)
        memory_management.load_models_gpu([model.forge_objects.vae.patcher])
    res = Processed(p, create_infotext(p), image)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
