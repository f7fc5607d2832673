"""Forge: every key of the real SD1, SD2, SDXL and Flux layouts reaches the tensor Forge's loader
(the stand-in's, written from backend/loader.py + huggingface_guess) put it in, through the same
conversion, or is known to have no live tensor."""
import pytest
import torch
from safetensors.torch import load_file

from merger.forge_keys import live_name
from tests.fixtures import layout_keys
from tests.forge_standin.harness import make_world
from tests.webui_standin.harness import same_bits

SCHEDULE = {"alphas_cumprod", "alphas_cumprod_prev", "betas", "log_one_minus_alphas_cumprod",
            "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance",
            "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod"}
# Keys Forge's loader drops: the DDPM schedule (Forge reads scheduler_config.json), CLIP-L's
# position_ids (a non-persistent buffer of transformers' CLIPTextEmbeddings), EMA weights.
NO_LIVE = {
    "sd1": SCHEDULE | {"cond_stage_model.transformer.text_model.embeddings.position_ids"},
    "sd2": SCHEDULE,
    "sdxl": {"conditioner.embedders.0.transformer.text_model.embeddings.position_ids"},
    "flux": set(),
    "flux_bare": set(),
}


def _real_keys(arch):
    if arch == "flux_bare":
        return {k for k, _, _ in layout_keys("flux", bare=True)}
    return {k for k, _, _ in layout_keys(arch)}


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl", "flux", "flux_bare"])
def test_every_layout_key_maps_to_what_forge_loaded(forge, tmp_path, arch):
    from merger.forge import ForgeLive
    from merger.live_targets import convert, parts
    w = make_world(tmp_path, arch)
    a = load_file(w.paths["a"])
    assert set(a) == _real_keys(arch)
    targets = ForgeLive(w.shared.sd_model).targets(a)
    assert set(a) - set(targets) == NO_LIVE[arch]
    for key, t in targets.items():
        assert t.refuse is None and t.shape == tuple(a[key].shape), key
        for live, p in zip(t.tensors(), parts(t, a[key])):
            assert same_bits(live, convert(p, t.via, live.dtype, live.device)), key
    covered = {id(live) for t in targets.values() for live in t.tensors()}
    engine = w.shared.sd_model.forge_objects_original
    for root in (engine.unet.model.diffusion_model, engine.clip.cond_stage_model, engine.vae.first_stage_model):
        for name, p in root.named_parameters():
            assert id(p) in covered or name.endswith(("text_projection.dummy", "logit_scale")), name


def test_open_clip_keys_become_hugging_face_names():
    g = "conditioner.embedders.1.model."
    assert live_name(g + "transformer.resblocks.3.attn.in_proj_weight").names == tuple(
        f"clip_g.transformer.text_model.encoder.layers.3.self_attn.{q}_proj.weight" for q in "qkv")
    assert live_name(g + "transformer.resblocks.31.mlp.c_fc.bias").names == (
        "clip_g.transformer.text_model.encoder.layers.31.mlp.fc1.bias",)
    tp = live_name(g + "text_projection")
    assert tp.names == ("clip_g.transformer.text_projection.weight",) and tp.transpose
    assert live_name("cond_stage_model.model.positional_embedding").names == (
        "clip_h.transformer.text_model.embeddings.position_embedding.weight",)
    assert live_name("cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight").names == (
        "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight",)          # old SD1 files
    assert live_name("text_encoders.t5xxl.transformer.shared.weight").names == ("t5xxl.transformer.shared.weight",)
    assert live_name("vae.decoder.conv_in.weight") == ("vae", ("decoder.conv_in.weight",), False)
    assert live_name("double_blocks.0.img_attn.qkv.weight").names == ("diffusion_model.double_blocks.0.img_attn.qkv.weight",)


def test_the_text_projection_of_sdxl_is_written_transposed(forge, tmp_path):
    from merger.forge import ForgeLive
    from merger.live_targets import write
    w = make_world(tmp_path, "sdxl")
    key = "conditioner.embedders.1.model.text_projection"
    t = ForgeLive(w.shared.sd_model).targets([key])[key]
    x = torch.arange(36, dtype=torch.float32).reshape(6, 6)
    with torch.inference_mode():
        write(t, x)
    assert torch.equal(t.tensors()[0].float(), x.t())
