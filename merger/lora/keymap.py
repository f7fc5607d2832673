"""Kohya LoRA module names <-> checkpoint weight keys, for SD1, SD2, SDXL and Flux single files.

Naming (kohya sd-scripts `networks/lora.py`, `lora_flux.py`; the WebUI's `lora_convert.py` reads
the same names): module path with "." -> "_" behind a prefix:

* SD1/SD2 UNet: ``lora_unet_`` + the *diffusers* path (``down_blocks_0_attentions_0_proj_in``);
  the checkpoint uses LDM paths (``input_blocks.1.1.proj_in``), converted by the tables below.
* SDXL UNet and Flux transformer: ``lora_unet_`` + the LDM / BFL path itself
  (``input_blocks_4_1_transformer_blocks_0_attn1_to_q``, ``double_blocks_0_img_attn_qkv``).
  Kohya's Flux files keep the fused ``img_attn.qkv`` and ``linear1`` (split-qkv training is merged
  back on save), so they map 1:1.
* CLIP-L (HF layout): ``lora_te_`` (SD1), ``lora_te1_`` (SDXL, Flux) + ``text_model_…``.
* OpenCLIP (SD2 ``cond_stage_model.model.``, SDXL ``conditioner.embedders.1.model.``): kohya names
  use the HF layout (``lora_te_``/``lora_te2_`` + ``text_model_encoder_layers_N_self_attn_q_proj``);
  q/k/v are row blocks [0:d], [d:2d], [2d:3d] of the fused ``attn.in_proj_weight``.
* T5-XXL (Flux): ``lora_te3_`` + ``encoder_block_…``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

UNET = "model.diffusion_model."
TE_ROOTS = {   # arch -> [(kohya prefix, checkpoint prefix, layout)]
    "sd1": [("lora_te_", "cond_stage_model.transformer.", "hf")],
    "sd2": [("lora_te_", "cond_stage_model.model.", "openclip")],
    "sdxl": [("lora_te1_", "conditioner.embedders.0.transformer.", "hf"),
             ("lora_te2_", "conditioner.embedders.1.model.", "openclip")],
    "flux": [("lora_te1_", "text_encoders.clip_l.transformer.", "hf"),
             ("lora_te3_", "text_encoders.t5xxl.transformer.", "hf")],
}
RESNET_LDM_TO_HF = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
RESNET_HF_TO_LDM = {v: k for k, v in RESNET_LDM_TO_HF.items()}
TOP_LDM_TO_HF = {"input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1",
                 "time_embed.2": "time_embedding.linear_2", "out.0": "conv_norm_out", "out.2": "conv_out"}
TOP_HF_TO_LDM = {v: k for k, v in TOP_LDM_TO_HF.items()}
OPENCLIP_TO_HF = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                  "ln_1": "layer_norm1", "ln_2": "layer_norm2"}
HF_TO_OPENCLIP = {v: k for k, v in OPENCLIP_TO_HF.items()}
# Multi-word path segments: "_" inside them is not a path separator.
COMPOUNDS = (
    "input_blocks", "output_blocks", "middle_block", "transformer_blocks", "to_q", "to_k", "to_v",
    "to_out", "proj_in", "proj_out", "in_layers", "out_layers", "emb_layers", "skip_connection",
    "time_embed", "label_emb", "double_blocks", "single_blocks", "img_attn", "txt_attn", "img_mlp",
    "txt_mlp", "img_mod", "txt_mod", "final_layer", "adaLN_modulation", "img_in", "txt_in", "time_in",
    "vector_in", "guidance_in", "in_layer", "out_layer", "query_norm", "key_norm", "text_model",
    "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "layer_norm1", "layer_norm2",
    "final_layer_norm", "layer_norm", "wi_0", "wi_1", "relative_attention_bias", "in_proj",
    "down_blocks", "up_blocks", "mid_block", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out",
    "conv_norm_out", "time_embedding", "linear_1", "linear_2",
)
_COMPOUND_RE = re.compile("|".join(re.escape(c.replace("_", ".")) for c in sorted(COMPOUNDS, key=len, reverse=True)))
NOT_LORA = ("token_embedding", "position_embedding", "embed_tokens", "shared.weight",
            "relative_attention_bias", "positional_embedding", "text_projection", "logit_scale")


@dataclass(frozen=True)
class Target:
    """Where a LoRA module's ΔW goes: rows `rows` (None = all) of checkpoint tensor `key`."""

    key: str
    rows: int | None = None          # 0/1/2 = q/k/v third of a fused in_proj_weight


def dots(path: str) -> str:
    """Kohya underscore path -> dotted module path, keeping multi-word segments whole."""
    return _COMPOUND_RE.sub(lambda m: m.group(0).replace(".", "_"), path.replace("_", "."))


# ---------------------------------------------------------------- SD1/SD2 UNet: LDM <-> diffusers
def sd_unet_ldm_to_hf(p: str) -> str | None:
    """LDM module path (no prefix) -> diffusers path; None for paths diffusers has no name for."""
    for ldm, hf in TOP_LDM_TO_HF.items():
        if p == ldm:
            return hf
    m = re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", p)
    if m:
        n, sub, rest = int(m[1]), int(m[2]), m[3]
        i, j = divmod(n - 1, 3)
        if j == 2:
            return f"down_blocks.{i}.downsamplers.0.conv" if rest == "op" else None
        return _sub(f"down_blocks.{i}", "resnets" if sub == 0 else "attentions", j, rest)
    m = re.fullmatch(r"middle_block\.(\d)\.(.+)", p)
    if m:
        n, rest = int(m[1]), m[2]
        return _sub("mid_block", "attentions" if n == 1 else "resnets", n // 2, rest)
    m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", p)
    if m:
        n, sub, rest = int(m[1]), int(m[2]), m[3]
        i, j = divmod(n, 3)
        if sub == 2 or (sub == 1 and rest == "conv"):
            return f"up_blocks.{i}.upsamplers.0.conv" if rest == "conv" else None
        return _sub(f"up_blocks.{i}", "resnets" if sub == 0 else "attentions", j, rest)
    return None


def _sub(block: str, kind: str, j: int, rest: str) -> str | None:
    if kind == "resnets":
        rest = RESNET_LDM_TO_HF.get(rest)
        if rest is None:
            return None
    return f"{block}.{kind}.{j}.{rest}"


def sd_unet_hf_to_ldm(p: str) -> str | None:
    """Inverse of :func:`sd_unet_ldm_to_hf`."""
    if p in TOP_HF_TO_LDM:
        return TOP_HF_TO_LDM[p]
    m = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", p)
    if m:
        side, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if kind == "downsamplers":
            return f"input_blocks.{3 * i + 3}.0.op" if rest == "conv" else None
        if kind == "upsamplers":
            return f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.conv" if rest == "conv" else None
        sub = 0 if kind == "resnets" else 1
        n = 3 * i + j + 1 if side == "down_blocks" else 3 * i + j
        root = "input_blocks" if side == "down_blocks" else "output_blocks"
        return _ldm_rest(f"{root}.{n}.{sub}", kind, rest)
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", p)
    if m:
        n = 1 if m[1] == "attentions" else 2 * int(m[2])
        return _ldm_rest(f"middle_block.{n}", m[1], m[3])
    return None


def _ldm_rest(root: str, kind: str, rest: str) -> str | None:
    if kind == "resnets":
        rest = RESNET_HF_TO_LDM.get(rest)
        if rest is None:
            return None
    return f"{root}.{rest}"


# ---------------------------------------------------------------- text encoders
def openclip_to_hf(p: str) -> list[tuple[str, int | None]]:
    """OpenCLIP module path under `…model.` -> [(HF path, q/k/v index)]."""
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", p)
    if not m:
        return []
    layer, rest = m[1], m[2]
    base = f"text_model.encoder.layers.{layer}."
    if rest == "attn.in_proj":
        return [(base + f"self_attn.{x}_proj", i) for i, x in enumerate("qkv")]
    hf = OPENCLIP_TO_HF.get(rest)
    return [(base + hf, None)] if hf else []


def hf_to_openclip(p: str) -> tuple[str, int | None] | None:
    m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", p)
    if not m:
        return None
    layer, rest = m[1], m[2]
    base = f"transformer.resblocks.{layer}."
    qkv = re.fullmatch(r"self_attn\.([qkv])_proj", rest)
    if qkv:
        return base + "attn.in_proj", "qkv".index(qkv[1])
    oc = HF_TO_OPENCLIP.get(rest)
    return (base + oc, None) if oc else None


# ---------------------------------------------------------------- public mapping
def module_of(key: str) -> str | None:
    """Checkpoint weight key -> module path ('….weight' / OpenCLIP '….in_proj_weight')."""
    if key.endswith(".in_proj_weight"):
        return key[: -len("_weight")]
    if key.endswith(".weight"):
        return key[: -len(".weight")]
    return None


def is_lora_key(key: str, shape: tuple) -> bool:
    """A Linear (2-D) or Conv (4-D) weight outside the VAE that a LoRA module can target."""
    return (len(shape) in (2, 4) and module_of(key) is not None and not any(x in key for x in NOT_LORA)
            and not key.startswith(("first_stage_model.", "vae.")))


def kohya_names(key: str, shape: tuple, arch: str) -> list[tuple[str, Target]]:
    """Checkpoint weight `key` (shape `shape`) of `arch` -> its kohya module names and targets.
    Several names only for the fused OpenCLIP in-projection (q, k, v). Empty when not LoRA-able."""
    if not is_lora_key(key, shape):
        return []
    mod = module_of(key)
    if arch == "flux" and not mod.startswith(("text_encoders.", UNET)):
        mod = UNET + mod                       # bare transformer-only file
    if mod.startswith(UNET):
        p = mod[len(UNET):]
        if arch in ("sd1", "sd2"):
            p = sd_unet_ldm_to_hf(p)
            if p is None:
                return []
        return [("lora_unet_" + p.replace(".", "_"), Target(key))]
    for kprefix, cprefix, layout in TE_ROOTS.get(arch, []):
        if mod.startswith(cprefix):
            p = mod[len(cprefix):]
            if layout == "hf":
                return [(kprefix + p.replace(".", "_"), Target(key))]
            return [(kprefix + hf.replace(".", "_"), Target(key, rows)) for hf, rows in openclip_to_hf(p)]
    return []


def checkpoint_target(name: str, arch: str) -> Target | None:
    """Kohya module name -> canonical checkpoint target (full single-file key names), or None."""
    if name.startswith("lora_unet_"):
        p = dots(name[len("lora_unet_"):])
        if arch in ("sd1", "sd2"):
            p = sd_unet_hf_to_ldm(p)
            if p is None:
                return None
        return Target(UNET + p + ".weight")
    for kprefix, cprefix, layout in TE_ROOTS.get(arch, []):
        if name.startswith(kprefix):
            p = dots(name[len(kprefix):])
            if layout == "hf":
                return Target(cprefix + p + ".weight")
            oc = hf_to_openclip(p)
            if oc is None:
                return None
            path, rows = oc
            return Target(cprefix + path + ("_weight" if rows is not None else ".weight"), rows)
    return None


def build_index(shapes: dict[str, tuple], arch: str) -> dict[str, Target]:
    """{kohya name: Target} for every LoRA-able weight of a checkpoint ({key: shape})."""
    index: dict[str, Target] = {}
    for key, shape in shapes.items():
        for name, target in kohya_names(key, tuple(shape), arch):
            index[name] = target
    return index


def kohya_target_kind(key: str, arch: str) -> str | None:
    """Which of kohya's trainable groups a checkpoint weight belongs to: "attn" (transformer
    blocks, text encoders, Flux blocks: trained at --rank), "conv" (ResNet / sampler layers:
    only with --conv-rank), or None (never a kohya LoRA target: conv_in, time_embed, …)."""
    if not key.startswith(UNET):
        return "attn" if key.startswith(tuple(p for r in TE_ROOTS.get(arch, []) for _, p, _ in [r])) else None
    p = key[len(UNET):]
    if arch == "flux":
        return "attn" if p.startswith(("double_blocks.", "single_blocks.")) else None
    if "transformer_blocks." in p or re.search(r"\.(proj_in|proj_out)\.weight$", p):
        return "attn"
    if re.search(r"\.(in_layers\.2|out_layers\.3|emb_layers\.1|skip_connection|op|conv)\.weight$", p) \
            and re.match(r"(input_blocks\.[1-9]|input_blocks\.1\d|middle_block|output_blocks)", p):
        return "conv"
    return None


def lora_arch(names, metadata: dict | None = None, shapes: dict | None = None) -> str | None:
    """Architecture of a LoRA from its module names: Flux (double/single blocks, lora_te3_), SDXL
    (LDM-named UNet or lora_te1_/lora_te2_), SD1/SD2 (diffusers UNet or lora_te_; SD2 when
    `ss_v2` is "True" or a text-encoder / cross-attention input is 1024 wide). None = unknown."""
    names = list(names)
    has = lambda *p: any(n.startswith(p) for n in names)      # noqa: E731
    if has("lora_unet_double_blocks_", "lora_unet_single_blocks_", "lora_te3_"):
        return "flux"
    if has("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_output_blocks_",
           "lora_unet_middle_block_"):
        return "sdxl"
    if has("lora_te_", "lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_"):
        if str((metadata or {}).get("ss_v2", "")) == "True":
            return "sd2"
        for n, shape in (shapes or {}).items():
            if (n.startswith("lora_te_") or n.endswith("attn2_to_k")) and len(shape) >= 2:
                return "sd2" if shape[1] == 1024 else "sd1"
        return "sd1"
    return None
