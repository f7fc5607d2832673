"""Architecture detection and key → block mapping against the real key layouts in merger/layouts."""
from __future__ import annotations

from collections import Counter

import pytest

from merger import layouts
from merger.arch import FLUX, SD1, SD2, SDXL, check_same_arch, detect, get_arch, key_prefix, sdxl_26_to_20
from merger.errors import AlloyError



def _rows(name: str) -> list[list]:
    return layouts.load(name)["tensors"]


def _keys(name: str) -> list[str]:
    return [r[0] for r in _rows(name)]


def _sd2_keys() -> list[str]:
    """SD1 layout with the CLIP-L text encoder swapped for OpenCLIP-H (24 resblocks, as in SD2 checkpoints)."""
    keys = [k for k in _keys("sd1") if not k.startswith("cond_stage_model.")]
    te = "cond_stage_model.model."
    keys += [te + s for s in ("positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
                              "ln_final.weight", "ln_final.bias")]
    per_layer = ("ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                 "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias")
    keys += [f"{te}transformer.resblocks.{i}.{s}" for i in range(24) for s in per_layer]
    return keys


def _counts(arch, keys) -> dict:
    return dict(Counter(arch.block_of(k) for k in keys))


# ---- full per-block counts ------------------------------------------------------------------------

SD_UNET_COUNTS = {
    "IN00": 2, "IN01": 36, "IN02": 36, "IN03": 2, "IN04": 38, "IN05": 36, "IN06": 2, "IN07": 38, "IN08": 36,
    "IN09": 2, "IN10": 10, "IN11": 10, "M00": 46,
    "OUT00": 12, "OUT01": 12, "OUT02": 14, "OUT03": 38, "OUT04": 38, "OUT05": 40, "OUT06": 38, "OUT07": 38,
    "OUT08": 40, "OUT09": 38, "OUT10": 38,
}


def test_sd1_every_layout_key_has_the_expected_block():
    # BASE: 196 CLIP-L + 248 VAE + 682 EMA weights; OUT11: output_blocks.11 (38) + out (4) + time_embed (4)
    # + the EMA copies of time_embed (4); None: 12 schedule buffers, position_ids, EMA decay/num_updates.
    expected = dict(SD_UNET_COUNTS, BASE=196 + 248 + 682, OUT11=38 + 4 + 4 + 4)
    expected[None] = 15
    assert _counts(SD1, _keys("sd1")) == expected


def test_sd2_counts_differ_from_sd1_only_in_the_text_encoder():
    expected = dict(SD_UNET_COUNTS, BASE=24 * 12 + 3 + 248 + 682, OUT11=50)
    expected[None] = 12 + 2 + 3        # buffers, EMA decay/num_updates, positional_embedding/text_projection/logit_scale
    assert _counts(SD2, _sd2_keys()) == expected


def test_sdxl_every_layout_key_has_the_expected_block():
    expected = {
        "BASE": 196 + 387 + 248,         # CLIP-L (no position_ids), OpenCLIP-G weights, VAE
        "IN00": 2 + 4 + 4,               # conv_in + label_emb + time_embed
        "IN01": 10, "IN02": 10, "IN03": 2, "IN04": 58, "IN05": 56, "IN06": 2, "IN07": 218, "IN08": 216,
        "M00": 226,
        "OUT00": 218, "OUT01": 218, "OUT02": 220, "OUT03": 58, "OUT04": 58, "OUT05": 60, "OUT06": 12, "OUT07": 12,
        "OUT08": 12 + 4,                 # output_blocks.8 + out.0/out.2
        None: 12 + 1 + 4 + 3,            # buffers, position_ids, edm_vpred/v_pred/ztsnr, OpenCLIP non-weights
    }
    assert _counts(SDXL, _keys("sdxl")) == expected


def _flux_expected() -> dict:
    expected = {f"D{i:02d}": 24 for i in range(19)}
    expected.update({f"S{i:02d}": 8 for i in range(38)})
    expected.update({"CLIP": 196, "T5": 219, "IN": 16, "OUT": 4})
    return expected


def test_flux_every_layout_key_has_the_expected_block():
    expected = _flux_expected()
    expected[None] = 244                 # the VAE
    assert _counts(FLUX, _keys("flux")) == expected


def test_bare_flux_keys_map_like_their_prefixed_twins():
    rows = [r for r in _rows("flux") if len(r) > 6]
    assert len(rows) == 780
    for r in rows:
        assert FLUX.block_of(r[6]) == FLUX.block_of(r[0]), r[6]
    expected = {b: n for b, n in _flux_expected().items() if b not in ("CLIP", "T5")}
    assert _counts(FLUX, [r[6] for r in rows]) == expected


# ---- spot checks against the spec table (§5.3, §10.4, §20.1) --------------------------------------

P = "model.diffusion_model."


@pytest.mark.parametrize("key, block", [
    (P + "time_embed.0.weight", "OUT11"),
    (P + "time_embed.2.bias", "OUT11"),
    (P + "out.0.weight", "OUT11"),
    (P + "out.2.bias", "OUT11"),
    (P + "input_blocks.0.0.weight", "IN00"),
    (P + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "IN01"),
    (P + "input_blocks.3.0.op.bias", "IN03"),
    (P + "input_blocks.11.0.out_layers.3.weight", "IN11"),
    (P + "middle_block.0.in_layers.0.weight", "M00"),
    (P + "middle_block.1.proj_out.bias", "M00"),
    (P + "middle_block.2.emb_layers.1.weight", "M00"),
    (P + "output_blocks.0.0.skip_connection.weight", "OUT00"),
    (P + "output_blocks.2.1.conv.weight", "OUT02"),
    (P + "output_blocks.5.2.conv.bias", "OUT05"),
    (P + "output_blocks.11.1.transformer_blocks.0.ff.net.2.weight", "OUT11"),
    ("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.out_proj.weight", "BASE"),
    ("cond_stage_model.transformer.text_model.final_layer_norm.bias", "BASE"),
    ("cond_stage_model.transformer.text_model.embeddings.position_ids", None),
    ("first_stage_model.decoder.up.0.block.0.conv1.weight", "BASE"),
    ("first_stage_model.quant_conv.bias", "BASE"),
    ("model_ema.diffusion_modelinput_blocks00weight", "BASE"),
    ("model_ema.diffusion_modelout0weight", "BASE"),
    ("model_ema.diffusion_modeltime_embed0weight", "OUT11"),
    ("model_ema.decay", None),
    ("model_ema.num_updates", None),
    ("betas", None),
    ("alphas_cumprod", None),
    ("input_blocks.4.1.proj_in.weight", "IN04"),          # bare UNet key
    ("out.2.weight", "OUT11"),
    (P + "input_blocks.12.0.weight", None),                # no such block
])
def test_sd1_spot_checks(key, block):
    assert SD1.block_of(key) == block
    assert SD2.block_of(key) == block


@pytest.mark.parametrize("key, block", [
    (P + "label_emb.0.0.weight", "IN00"),
    (P + "time_embed.2.bias", "IN00"),
    (P + "input_blocks.0.0.bias", "IN00"),
    (P + "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight", "IN04"),
    (P + "input_blocks.8.1.proj_out.weight", "IN08"),
    (P + "middle_block.1.transformer_blocks.9.ff.net.0.proj.bias", "M00"),
    (P + "output_blocks.0.1.transformer_blocks.3.norm2.weight", "OUT00"),
    (P + "output_blocks.2.2.conv.weight", "OUT02"),
    (P + "output_blocks.8.0.skip_connection.bias", "OUT08"),
    (P + "out.0.weight", "OUT08"),
    (P + "out.2.bias", "OUT08"),
    ("conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight", "BASE"),
    ("conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight", "BASE"),
    ("conditioner.embedders.1.model.ln_final.bias", "BASE"),
    ("conditioner.embedders.1.model.positional_embedding", None),
    ("conditioner.embedders.1.model.text_projection", None),
    ("conditioner.embedders.1.model.logit_scale", None),
    ("conditioner.embedders.0.transformer.text_model.embeddings.position_ids", None),
    ("first_stage_model.encoder.down.0.block.1.norm1.weight", "BASE"),
    ("cond_stage_model.transformer.text_model.final_layer_norm.weight", None),   # alias: "Not Merge"
    ("v_pred", None), ("ztsnr", None), ("edm_vpred.sigma_max", None), ("betas", None),
    (P + "input_blocks.9.0.weight", None),
    ("middle_block.0.in_layers.2.weight", "M00"),           # bare UNet key
])
def test_sdxl_spot_checks(key, block):
    assert SDXL.block_of(key) == block


@pytest.mark.parametrize("key, block", [
    (P + "double_blocks.0.img_attn.qkv.weight", "D00"),
    (P + "double_blocks.18.txt_mlp.2.bias", "D18"),
    (P + "double_blocks.7.img_attn.norm.key_norm.scale", "D07"),
    (P + "single_blocks.0.linear1.weight", "S00"),
    (P + "single_blocks.37.modulation.lin.bias", "S37"),
    (P + "single_blocks.12.norm.query_norm.scale", "S12"),
    (P + "img_in.weight", "IN"), (P + "txt_in.bias", "IN"), (P + "time_in.in_layer.weight", "IN"),
    (P + "vector_in.out_layer.bias", "IN"), (P + "guidance_in.in_layer.bias", "IN"),
    (P + "final_layer.linear.weight", "OUT"), (P + "final_layer.adaLN_modulation.1.bias", "OUT"),
    ("text_encoders.clip_l.transformer.text_model.final_layer_norm.weight", "CLIP"),
    ("text_encoders.clip_l.transformer.text_model.embeddings.position_ids", None),
    ("text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight", "T5"),
    ("text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "T5"),
    ("vae.decoder.conv_in.weight", None), ("vae.encoder.mid.attn_1.q.bias", None),
    ("double_blocks.3.img_mod.lin.weight", "D03"), ("single_blocks.36.linear2.bias", "S36"),
    ("img_in.bias", "IN"), ("final_layer.linear.bias", "OUT"),
    (P + "double_blocks.19.img_attn.qkv.weight", None),
])
def test_flux_spot_checks(key, block):
    assert FLUX.block_of(key) == block


def test_block_ids():
    assert len(SD1.block_ids) == len(SD2.block_ids) == 26 and len(SDXL.block_ids) == 20 and len(FLUX.block_ids) == 61
    assert SD1.block_ids[:3] == ("BASE", "IN00", "IN01") and SD1.block_ids[12:15] == ("IN11", "M00", "OUT00")
    assert SDXL.block_ids[9:12] == ("IN08", "M00", "OUT00") and SDXL.block_ids[-1] == "OUT08"
    assert FLUX.block_ids[:4] == ("CLIP", "T5", "IN", "D00") and FLUX.block_ids[21:23] == ("D18", "S00")
    assert FLUX.block_ids[-2:] == ("S37", "OUT")


# ---- detection ------------------------------------------------------------------------------------

def test_detect_real_layouts():
    assert detect(_keys("sd1")) is SD1
    assert detect(_sd2_keys()) is SD2
    assert detect(_keys("sdxl")) is SDXL
    assert detect(_keys("flux")) is FLUX
    assert detect([r[6] for r in _rows("flux") if len(r) > 6]) is FLUX
    assert detect([r[0] for r in _rows("sdxl") if r[5]]) is SDXL


def test_detect_unet_only_files():
    sd1_unet = [k for k in _keys("sd1") if k.startswith(P)]
    assert detect(sd1_unet) is SD1
    assert detect([k[len(P):] for k in sd1_unet]) is SD1
    shapes = {P + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}
    assert detect(sd1_unet, shapes=shapes) is SD2
    shapes = {P + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}
    assert detect(sd1_unet, shapes=shapes) is SD1
    sdxl_unet = [k for k in _keys("sdxl") if k.startswith(P)]
    assert detect(sdxl_unet) is SDXL
    assert detect([k[len(P):] for k in sdxl_unet]) is SDXL


def test_refiner_is_refused_with_the_label():
    keys = ["conditioner.embedders.0.model.transformer.resblocks.0.ln_1.weight",
            P + "label_emb.0.0.weight"] + [P + f"input_blocks.{i}.0.weight" for i in range(12)]
    with pytest.raises(AlloyError, match="model B.*refiner"):
        detect(keys, "model B")
    with pytest.raises(AlloyError, match="refiner"):
        detect(keys[1:], "model B")          # UNet only: label_emb with 12 input blocks


def test_sd3_and_unknown_layouts_are_refused_with_the_label():
    with pytest.raises(AlloyError, match="my.safetensors.*Stable Diffusion 3"):
        detect(_keys("sd3"), "my.safetensors")
    with pytest.raises(AlloyError, match="model C.*unrecognised"):
        detect(["encoder.layers.0.weight", "lm_head.weight"], "model C")
    with pytest.raises(AlloyError, match="model A"):
        detect([], "model A")


def test_check_same_arch_names_both_files():
    check_same_arch({"model A": SD1, "model B": SD1})
    with pytest.raises(AlloyError, match="model A is SD1.x but model B is SDXL"):
        check_same_arch({"model A": SD1, "model B": SDXL})
    with pytest.raises(AlloyError, match="model C is Flux"):
        check_same_arch({"model A": SDXL, "model B": SDXL, "model C": FLUX})


def test_get_arch():
    assert get_arch("sdxl") is SDXL and get_arch("SD1.x") is SD1 and get_arch("Flux") is FLUX
    with pytest.raises(AlloyError, match="Unknown architecture"):
        get_arch("sd3")


def test_sdxl_26_to_20_keeps_base_in00_08_m00_out00_08():
    values = list(range(26))
    assert sdxl_26_to_20(values) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    with pytest.raises(AlloyError):
        sdxl_26_to_20(values[:20])


# ---- other key predicates ---------------------------------------------------------------------------

def test_prune_keep_counts():
    sd1 = _keys("sd1")
    assert sum(map(SD1.prune_keep, sd1)) == 197 + 248 + 686      # TE, VAE, UNet; drops EMA and buffers
    sdxl = _keys("sdxl")
    assert sum(map(SDXL.prune_keep, sdxl)) == 197 + 390 + 248 + 1680
    assert not SDXL.prune_keep("cond_stage_model.transformer.text_model.final_layer_norm.weight")
    assert SDXL.is_alias("cond_stage_model.transformer.text_model.final_layer_norm.weight")
    assert not SD1.is_alias("cond_stage_model.transformer.text_model.final_layer_norm.weight")
    flux = _keys("flux")
    assert all(map(FLUX.prune_keep, flux))
    assert FLUX.prune_keep("double_blocks.0.img_attn.qkv.weight") and not FLUX.prune_keep("junk.weight")


def test_vae_and_text_encoder_predicates():
    assert sum(map(SD1.is_vae, _keys("sd1"))) == 248
    assert sum(map(SD1.is_text_encoder, _keys("sd1"))) == 197
    assert sum(map(SDXL.is_text_encoder, _keys("sdxl"))) == 197 + 390
    assert sum(map(FLUX.is_vae, _keys("flux"))) == 244
    assert sum(map(FLUX.is_text_encoder, _keys("flux"))) == 196 + 219


def test_adjust_keys_and_position_ids_exist_in_the_layouts():
    for arch, name in ((SD1, "sd1"), (SDXL, "sdxl")):
        keys = set(_keys(name))
        assert set(arch.adjust_keys) == {"in_w", "in_b", "out0_w", "out0_b", "out2_w", "out2_b"}
        assert set(arch.adjust_keys.values()) <= keys
        assert set(arch.position_ids_keys) <= keys
        assert arch.adjust_role("out.2.bias") == "out2_b" and arch.adjust_role(P + "out.2.bias") == "out2_b"
        assert arch.adjust_role(P + "out.1.bias") is None
    assert dict(FLUX.adjust_keys) == {} and SD2.position_ids_keys == ()


def test_key_prefix():
    assert key_prefix(_keys("sd1"), SD1) == P
    assert key_prefix([r[6] for r in _rows("flux") if len(r) > 6], FLUX) == ""
    assert key_prefix(["input_blocks.0.0.weight"], SD1) == ""
    assert SD1.canonical_key("out.0.weight") == P + "out.0.weight"


def test_arch_equality_and_hash():
    assert SD1 == get_arch("sd1") and SD1 != SD2 and len({SD1, SD2, SDXL, FLUX, get_arch("sd1")}) == 4
