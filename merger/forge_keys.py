"""Checkpoint key → where Stable Diffusion WebUI Forge keeps it (pure names; no WebUI import).

Forge (`backend/loader.py` split_state_dict, huggingface_guess `model_list` /
`utils.clip_text_transformers_convert`) splits a single-file checkpoint into components:
  unet  `model.diffusion_model.X`                      → KModel `diffusion_model.X`
  vae   `first_stage_model.X` (Flux/SD3: `vae.X`)      → the VAE's `first_stage_model` `X`
  clip  text encoders, in Hugging Face layout, in the JointTextEncoder (`clip_l`, `clip_g`,
        `clip_h`, `t5xxl`):
        SD1  `cond_stage_model.transformer.[text_model.]X` → `clip_l.transformer.text_model.X`
        SDXL `conditioner.embedders.0.transformer.text_model.X` → `clip_l.transformer.text_model.X`
        SDXL `conditioner.embedders.1.model.X` (open_clip)    → `clip_g.…` converted (below)
        SD2  `cond_stage_model.model.X` / `conditioner.embedders.0.model.X` → `clip_h.…` converted
        Flux/SD3 `text_encoders.X` → `X`
open_clip → HF: `positional_embedding`, `token_embedding.weight`, `ln_final.*`, resblocks'
`ln_1/ln_2/mlp.c_fc/mlp.c_proj/attn.out_proj` are renamed; `attn.in_proj_{weight,bias}` is split
row-wise into q/k/v; `text_projection` is transposed into `text_projection.weight`. Other keys
(schedule buffers, `v_pred`, EMA, …) have no live tensor; keys of a bare Flux transformer file
are the UNet's own names."""
from __future__ import annotations

from typing import NamedTuple


class LiveName(NamedTuple):
    component: str             # "unet" | "clip" | "vae"
    names: tuple[str, ...]     # live tensor names inside the component (3 for a fused in_proj)
    transpose: bool = False


_PREFIXES = (          # checkpoint prefix → (component, live prefix); first match wins
    ("model.diffusion_model.", "unet", "diffusion_model."),
    ("first_stage_model.", "vae", ""),
    ("vae.", "vae", ""),
    ("cond_stage_model.transformer.text_model.", "clip", "clip_l.transformer.text_model."),
    ("cond_stage_model.transformer.", "clip", "clip_l.transformer.text_model."),
    ("conditioner.embedders.0.transformer.text_model.", "clip", "clip_l.transformer.text_model."),
    ("text_encoders.", "clip", ""),
)
_OPEN_CLIP = (
    ("conditioner.embedders.1.model.", "clip_g."),
    ("cond_stage_model.model.", "clip_h."),
    ("conditioner.embedders.0.model.", "clip_h."),
)
_RENAMED = {"positional_embedding": "embeddings.position_embedding.weight",
            "token_embedding.weight": "embeddings.token_embedding.weight",
            "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
_RESBLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
RESBLOCKS = 32          # transformers_convert(…, 32): deeper resblocks are not converted
EMBEDDINGS = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
              "transformer.shared.weight")


def live_name(key: str) -> LiveName:
    """Where Forge would keep checkpoint key `key` (the name may not exist in the loaded model)."""
    for prefix, enc in _OPEN_CLIP:
        if key.startswith(prefix):
            return _open_clip(key[len(prefix):], enc)
    for prefix, comp, live in _PREFIXES:
        if key.startswith(prefix):
            return LiveName(comp, (live + key[len(prefix):],))
    # A bare transformer file (Flux): Forge's loader prefixes every key with model.diffusion_model.
    # Other unprefixed keys (schedule buffers, EMA, v_pred) name no tensor of the UNet either.
    return LiveName("unet", ("diffusion_model." + key,))


def _open_clip(rest: str, enc: str) -> LiveName:
    """huggingface_guess clip_text_transformers_convert for one open_clip key under encoder `enc`."""
    tm = enc + "transformer.text_model."
    if rest in _RENAMED:
        return LiveName("clip", (tm + _RENAMED[rest],))
    if rest == "text_projection":
        return LiveName("clip", (enc + "transformer.text_projection.weight",), transpose=True)
    if rest == "text_projection.weight":
        return LiveName("clip", (enc + "transformer.text_projection.weight",))
    parts = rest.split(".")
    if len(parts) >= 5 and parts[:2] == ["transformer", "resblocks"] and parts[2].isdigit() \
            and int(parts[2]) < RESBLOCKS:
        layer = f"{tm}encoder.layers.{parts[2]}."
        inner, leaf = ".".join(parts[3:-1]), parts[-1]
        if inner == "attn" and leaf in ("in_proj_weight", "in_proj_bias"):
            suffix = leaf[len("in_proj_"):]
            return LiveName("clip", tuple(f"{layer}{q}.{suffix}" for q in _QKV))
        if inner in _RESBLOCK:
            return LiveName("clip", (f"{layer}{_RESBLOCK[inner]}.{leaf}",))
    return LiveName("clip", (enc + rest,))


def is_embedding(name: str) -> bool:
    """Token/position embeddings that Forge's text engines turn into fp32 after loading."""
    return name.endswith(EMBEDDINGS)


def encoder_of(name: str) -> str:
    """`clip_l.transformer…` → "clip_l" (the JointTextEncoder entry)."""
    return name.split(".", 1)[0]
