"""prune_keys (arch data) and vae_overrides (bake-in VAE key mapping)."""
from types import SimpleNamespace

import pytest
import torch

from merger.errors import AlloyError
from merger.io import prune_keys, save_state_dict, vae_overrides

SD1_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "model_ema.diffusion_modelinput_blocks00weight",
    "first_stage_model.decoder.conv_in.weight",
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "alphas_cumprod",
    "betas",
]

VAE = {"encoder.conv_in.weight": torch.ones(2, 3), "decoder.conv_out.bias": torch.zeros(3),
       "quant_conv.weight": torch.ones(1), "post_quant_conv.bias": torch.ones(1)}


def test_prune_with_substrings_and_predicate():
    arch = SimpleNamespace(name="sd1", prune_keep=("diffusion_model.", "first_stage_model.", "cond_stage_model."))
    assert prune_keys(SD1_KEYS, arch) == [SD1_KEYS[0], SD1_KEYS[2], SD1_KEYS[3]]
    arch2 = SimpleNamespace(name="x", prune_keep=lambda k: k.startswith("model."))
    assert prune_keys(SD1_KEYS, arch2) == [SD1_KEYS[0]]
    with pytest.raises(AlloyError):
        prune_keys(SD1_KEYS, SimpleNamespace(name="y"))


def test_prune_with_real_arch():
    arch_mod = pytest.importorskip("merger.arch")
    kept = prune_keys(SD1_KEYS, arch_mod.get_arch("sd1"))
    assert SD1_KEYS[0] in kept and "betas" not in kept and SD1_KEYS[1] not in kept


@pytest.mark.parametrize("prefix, ext, extra", [
    ("", ".safetensors", {}),
    ("first_stage_model.", ".safetensors", {"model.diffusion_model.x": torch.ones(1)}),
    ("vae.", ".safetensors", {}),
    ("", ".pt", {"loss.logvar": torch.zeros(())}),
])
def test_vae_overrides(tmp_path, prefix, ext, extra):
    t = {prefix + k: v for k, v in VAE.items()} | extra
    p = tmp_path / f"vae{ext}"
    if ext == ".pt":
        torch.save({"state_dict": t}, p)
    else:
        save_state_dict(p, t)
    ov = vae_overrides(str(p))
    assert sorted(ov) == sorted("first_stage_model." + k for k in VAE)
    src, key = ov["first_stage_model.encoder.conv_in.weight"]
    assert key == prefix + "encoder.conv_in.weight"
    assert torch.equal(src.read(key), VAE["encoder.conv_in.weight"])
    src.close()


def test_not_a_vae(tmp_path):
    p = save_state_dict(tmp_path / "unet.safetensors", {"model.diffusion_model.w": torch.ones(1)})
    with pytest.raises(AlloyError, match="not a VAE") as ei:
        vae_overrides(p)
    assert "unet.safetensors" in str(ei.value)
    d = save_state_dict(tmp_path / "diffusers.safetensors",
                        {"encoder.down_blocks.0.w": torch.ones(1), "decoder.up_blocks.0.w": torch.ones(1)})
    with pytest.raises(AlloyError, match="diffusers"):
        vae_overrides(d)
