"""Kohya name <-> checkpoint key mapping over the real SD1 / SDXL / Flux key lists."""

import pytest

from merger import layouts

from merger.arch import get_arch
from merger.lora.keymap import Target, build_index, checkpoint_target, kohya_names, kohya_target_kind, lora_arch



def layout(arch):
    return {r.key: r.shape for r in layouts.rows(arch) if r.default}


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "flux"])
def test_every_lora_able_key_round_trips(arch):
    shapes = layout(arch)
    seen = {}
    n = 0
    for key, shape in shapes.items():
        if len(shape) not in (2, 4) or not key.endswith("weight") or key.startswith(("first_stage_model.", "vae.")):
            continue
        if any(x in key for x in ("embedding", "shared.weight", "relative_attention_bias", "text_projection")):
            continue
        names = kohya_names(key, shape, arch)
        assert names, key
        for name, target in names:
            assert name not in seen, (name, key, seen.get(name))
            seen[name] = target
            assert checkpoint_target(name, arch) == target, name
            n += 1
    assert build_index(shapes, arch) == seen
    assert n > 300


def test_sd2_openclip_qkv_rows():
    key = "cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight"
    names = kohya_names(key, (3072, 1024), "sd2")
    assert names == [(f"lora_te_text_model_encoder_layers_3_self_attn_{x}_proj", Target(key, i)) for i, x in enumerate("qkv")]
    assert checkpoint_target("lora_te_text_model_encoder_layers_3_mlp_fc2", "sd2") == \
        Target("cond_stage_model.model.transformer.resblocks.3.mlp.c_proj.weight")
    assert checkpoint_target("lora_te_text_model_encoder_layers_3_self_attn_out_proj", "sd2") == \
        Target("cond_stage_model.model.transformer.resblocks.3.attn.out_proj.weight")


REAL = [  # (arch, kohya name from real files, checkpoint key)
    ("sd1", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
     "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"),
    ("sd1", "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj",
     "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight"),
    ("sd1", "lora_unet_mid_block_attentions_0_proj_out", "model.diffusion_model.middle_block.1.proj_out.weight"),
    ("sd1", "lora_unet_down_blocks_1_resnets_0_conv_shortcut", "model.diffusion_model.input_blocks.4.0.skip_connection.weight"),
    ("sd1", "lora_unet_up_blocks_0_upsamplers_0_conv", "model.diffusion_model.output_blocks.2.1.conv.weight"),
    ("sd1", "lora_unet_up_blocks_1_upsamplers_0_conv", "model.diffusion_model.output_blocks.5.2.conv.weight"),
    ("sd1", "lora_unet_down_blocks_2_downsamplers_0_conv", "model.diffusion_model.input_blocks.9.0.op.weight"),
    ("sd1", "lora_unet_mid_block_resnets_1_time_emb_proj", "model.diffusion_model.middle_block.2.emb_layers.1.weight"),
    ("sd1", "lora_te_text_model_encoder_layers_11_self_attn_out_proj",
     "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.out_proj.weight"),
    ("sdxl", "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_k",
     "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_k.weight"),
    ("sdxl", "lora_unet_output_blocks_0_1_transformer_blocks_9_attn2_to_out_0",
     "model.diffusion_model.output_blocks.0.1.transformer_blocks.9.attn2.to_out.0.weight"),
    ("sdxl", "lora_te1_text_model_encoder_layers_0_mlp_fc1",
     "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"),
    ("flux", "lora_unet_double_blocks_0_img_attn_qkv", "model.diffusion_model.double_blocks.0.img_attn.qkv.weight"),
    ("flux", "lora_unet_single_blocks_37_linear1", "model.diffusion_model.single_blocks.37.linear1.weight"),
    ("flux", "lora_unet_double_blocks_5_txt_mlp_2", "model.diffusion_model.double_blocks.5.txt_mlp.2.weight"),
    ("flux", "lora_te1_text_model_encoder_layers_0_self_attn_k_proj",
     "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight"),
]


@pytest.mark.parametrize("arch,name,key", REAL)
def test_real_world_names(arch, name, key):
    assert checkpoint_target(name, arch) == Target(key)


def test_sdxl_te2_in_proj():
    t = checkpoint_target("lora_te2_text_model_encoder_layers_31_self_attn_v_proj", "sdxl")
    assert t == Target("conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight", 2)


def test_unknown_names_map_to_nothing():
    assert checkpoint_target("lora_unet_down_blocks_0_bogus_0_x", "sd1") is None
    assert checkpoint_target("lycoris_foo", "sdxl") is None
    assert checkpoint_target("lora_te_text_model_encoder_layers_0_layer_normx", "sd2") is None


def test_blocks_through_arch():
    sd1, sdxl = get_arch("sd1"), get_arch("sdxl")
    assert sd1.block_of(checkpoint_target("lora_unet_down_blocks_0_attentions_1_proj_in", "sd1").key) == "IN02"
    assert sd1.block_of(checkpoint_target("lora_unet_up_blocks_3_attentions_2_proj_in", "sd1").key) == "OUT11"
    assert sd1.block_of(checkpoint_target("lora_te_text_model_encoder_layers_0_mlp_fc1", "sd1").key) == "BASE"
    assert sdxl.block_of(checkpoint_target("lora_unet_input_blocks_4_1_proj_in", "sdxl").key) == "IN04"


def test_target_kinds():
    assert kohya_target_kind("model.diffusion_model.input_blocks.1.1.proj_in.weight", "sd1") == "attn"
    assert kohya_target_kind("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", "sd1") == "conv"
    assert kohya_target_kind("model.diffusion_model.input_blocks.0.0.weight", "sd1") is None
    assert kohya_target_kind("model.diffusion_model.time_embed.0.weight", "sdxl") is None


def test_lora_arch_detection():
    assert lora_arch(["lora_unet_double_blocks_0_img_attn_qkv"]) == "flux"
    assert lora_arch(["lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_unet_input_blocks_4_1_proj_in"]) == "sdxl"
    assert lora_arch(["lora_unet_down_blocks_0_attentions_0_proj_in"]) == "sd1"
    assert lora_arch(["lora_te_text_model_encoder_layers_0_mlp_fc1"], {"ss_v2": "True"}) == "sd2"
    assert lora_arch(["lora_te_text_model_encoder_layers_0_mlp_fc1"], None,
                     {"lora_te_text_model_encoder_layers_0_mlp_fc1": (4, 1024)}) == "sd2"
    assert lora_arch(["something_else"]) is None
