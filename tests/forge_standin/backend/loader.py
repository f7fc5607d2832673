"""Stand-in of backend/loader.py (forge_loader, split_state_dict) with the key conversions of
huggingface_guess @84826248 (model_list SD15/SD20/SDXL/Flux process_clip_state_dict,
utils.transformers_convert / clip_text_transformers_convert), written from reading them.

The file is split by prefix into unet / vae / text-encoder state dicts; text encoders go to Hugging
Face layout (open_clip's fused in_proj split into q/k/v, text_projection transposed); each component
is built in its storage dtype and loaded with load_state_dict(strict=False), all under
torch.inference_mode() (so every parameter is an inference tensor)."""
import torch
from safetensors.torch import load_file

from backend import memory_management as mm
from backend.nn import IntegratedCLIP, component

RESBLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
            "attn.out_proj": "self_attn.out_proj"}
TOP = {"positional_embedding": "embeddings.position_embedding.weight",
       "token_embedding.weight": "embeddings.token_embedding.weight",
       "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}


def prefix_replace(sd, replace, filter_keys=False):
    out = {} if filter_keys else sd
    for old, new in replace.items():
        for k in [k for k in sd if k.startswith(old)]:
            out[new + k[len(old):]] = sd.pop(k)
    return out


def transformers_convert(sd, prefix_from, prefix_to, number):
    for k, v in TOP.items():
        if prefix_from + k in sd:
            sd[prefix_to + v] = sd.pop(prefix_from + k)
    for i in range(number):
        for x, y in RESBLOCK.items():
            for wb in ("weight", "bias"):
                k = f"{prefix_from}transformer.resblocks.{i}.{x}.{wb}"
                if k in sd:
                    sd[f"{prefix_to}encoder.layers.{i}.{y}.{wb}"] = sd.pop(k)
        for wb in ("weight", "bias"):
            k = f"{prefix_from}transformer.resblocks.{i}.attn.in_proj_{wb}"
            if k in sd:
                w = sd.pop(k)
                n = w.shape[0] // 3
                for j, p in enumerate(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                    sd[f"{prefix_to}encoder.layers.{i}.{p}.{wb}"] = w[n * j:n * (j + 1)]
    return sd


def clip_text_transformers_convert(sd, prefix_from, prefix_to):
    sd = transformers_convert(sd, prefix_from, prefix_to + "text_model.", 32)
    if prefix_from + "text_projection.weight" in sd:
        sd[prefix_to + "text_projection.weight"] = sd.pop(prefix_from + "text_projection.weight")
    if prefix_from + "text_projection" in sd:
        sd[prefix_to + "text_projection.weight"] = sd.pop(prefix_from + "text_projection").transpose(0, 1).contiguous()
    return sd


def process_clip(arch, sd):
    if arch == "sd1":
        for k in [k for k in sd if k.startswith("cond_stage_model.transformer.")
                  and not k.startswith("cond_stage_model.transformer.text_model.")]:
            sd[k.replace("cond_stage_model.transformer.", "cond_stage_model.transformer.text_model.")] = sd.pop(k)
        return prefix_replace(sd, {"cond_stage_model.": "clip_l."}, filter_keys=True)
    if arch == "sd2":
        sd = prefix_replace(sd, {"conditioner.embedders.0.model.": "clip_h.", "cond_stage_model.model.": "clip_h."}, True)
        return clip_text_transformers_convert(sd, "clip_h.", "clip_h.transformer.")
    if arch == "sdxl":
        sd = prefix_replace(sd, {"conditioner.embedders.0.transformer.text_model": "clip_l.transformer.text_model",
                                 "conditioner.embedders.1.model.": "clip_g."}, True)
        return clip_text_transformers_convert(sd, "clip_g.", "clip_g.transformer.")
    return prefix_replace(sd, {"text_encoders.": ""}, filter_keys=True)


def guess(sd):
    if "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale" in sd:
        encs = [e for e, k in (("clip_l", "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"),
                               ("t5xxl", "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight")) if k in sd]
        return "flux", "vae.", encs
    if any(k.startswith("conditioner.embedders.1.") for k in sd):
        return "sdxl", "first_stage_model.", ["clip_l", "clip_g"]
    if any(k.startswith(("cond_stage_model.model.", "conditioner.embedders.0.model.")) for k in sd):
        return "sd2", "first_stage_model.", ["clip_h"]
    return "sd1", "first_stage_model.", ["clip_l"]


def take(sd, prefix):
    return {k[len(prefix):]: sd.pop(k) for k in [k for k in sd if k.startswith(prefix)]}


def split_state_dict(sd):
    if not any(k.startswith("model.diffusion_model") for k in sd):
        sd = {f"model.diffusion_model.{k}": v for k, v in sd.items()}
    arch, vae_prefix, encoders = guess(sd)
    out = {"unet": take(sd, "model.diffusion_model."), "vae": take(sd, vae_prefix)}
    sd = process_clip(arch, sd)
    out["encoders"] = {e: take(sd, e + ".") for e in encoders}
    return arch, out


def load(module, sd):
    module.load_state_dict(sd, strict=False)
    return module


@torch.inference_mode()
def forge_loader(path):
    from backend.diffusion_engine.base import ENGINES
    arch, parts = split_state_dict(load_file(str(path)))
    unet = component(parts["unet"], mm.unet_dtype())
    unet.storage_dtype = mm.unet_dtype()
    load(unet, parts["unet"])
    vae = load(component(parts["vae"], mm.vae_dtype()), parts["vae"])
    encoders = {e: load(IntegratedCLIP(sd, mm.text_encoder_dtype()), sd) for e, sd in parts["encoders"].items()}
    return ENGINES[arch](unet, encoders, vae)
