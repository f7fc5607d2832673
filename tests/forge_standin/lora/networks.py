"""Stand-in of extensions-builtin/sd_forge_lora/networks.py (Forge): load_networks compares the
compiled LoRA list with sd_model.current_lora_hash; when it differs it resets forge_objects
unet/clip to forge_objects_original, clones the patchers with each LoRA's patches added
(load_lora_for_models) and stores forge_objects_after_applying_lora. The weights change later,
when memory_management loads a patcher (LoraLoader.refresh). A stand-in LoRA file is a dict
{("unet" | "clip", live parameter name): delta}, registered in `available` by name."""
from modules import sd_models

available = {}
loaded_networks = []


def load_lora_for_models(model, clip, lora, strength_model, strength_clip, filename="default"):
    lora_unet = {k: v for (c, k), v in lora.items() if c == "unet"}
    lora_clip = {k: v for (c, k), v in lora.items() if c == "clip"}
    new_model, new_clip = model.clone(), clip.clone()
    if lora_unet:
        new_model.add_patches(filename=filename, patches=lora_unet, strength_patch=strength_model)
        model = new_model
    if lora_clip:
        new_clip.add_patches(filename=filename, patches=lora_clip, strength_patch=strength_clip)
        clip = new_clip
    return model, clip


def load_networks(loras):
    """`loras`: [(name, multiplier)] from the prompt."""
    current_sd = sd_models.model_data.get_sd_model()
    loaded_networks[:] = [name for name, _ in loras]
    compiled = [[name, mult, mult, False] for name, mult in loras]
    compiled_hash = str(compiled)
    if current_sd.current_lora_hash == compiled_hash:
        return
    current_sd.current_lora_hash = compiled_hash
    current_sd.forge_objects.unet = current_sd.forge_objects_original.unet
    current_sd.forge_objects.clip = current_sd.forge_objects_original.clip
    for name, strength_model, strength_clip, _ in compiled:
        current_sd.forge_objects.unet, current_sd.forge_objects.clip = load_lora_for_models(
            current_sd.forge_objects.unet, current_sd.forge_objects.clip, available[name], strength_model,
            strength_clip, filename=name)
    current_sd.forge_objects_after_applying_lora = current_sd.forge_objects.shallow_copy()
