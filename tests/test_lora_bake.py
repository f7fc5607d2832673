"""Bake (W + Σ r·b·ΔW, streamed), OpenCLIP fused q/k/v, unmatched reporting, extract → bake round trip."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from merger.errors import AlloyError
from merger.lora.bake import bake
from merger.lora.blocks import LoraSpec
from merger.lora.extract import extract
from merger.lora.formats import load_lora
from merger.lora.linalg import module_delta
from merger.lora.synth import lora_for_checkpoint

U = "model.diffusion_model."
TE = "cond_stage_model.transformer.text_model.encoder.layers.0."
SD1 = {
    TE + "self_attn.q_proj.weight": (8, 8), TE + "self_attn.q_proj.bias": (8,), TE + "mlp.fc1.weight": (16, 8),
    TE + "layer_norm1.weight": (8,),
    "cond_stage_model.transformer.text_model.embeddings.position_ids": (1, 77),
    U + "input_blocks.0.0.weight": (8, 9, 3, 3),
    U + "input_blocks.1.0.in_layers.2.weight": (8, 8, 3, 3),
    U + "input_blocks.1.1.proj_in.weight": (8, 8, 1, 1),
    U + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (8, 8),
    U + "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (8, 6),
    U + "middle_block.1.transformer_blocks.0.ff.net.2.weight": (8, 12),
    "first_stage_model.decoder.conv_in.weight": (4, 4, 3, 3),
}


def ckpt(path, shapes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.arange(77).reshape(1, 77) if k.endswith("position_ids") else torch.randn(*s, generator=g).to(dtype))
          for k, s in shapes.items()}
    save_file(sd, str(path))
    return str(path)


def lora(path, shapes, arch, rank, alpha, seed, conv=False, extra=None, only=None):
    sd = lora_for_checkpoint(shapes, arch, rank, alpha, seed=seed, conv=conv, only=only)
    sd.update(extra or {})
    save_file(sd, str(path))
    return str(path)


def test_bake_equals_w_plus_weighted_deltas(tmp_path):
    model = ckpt(tmp_path / "m.safetensors", SD1)
    bogus = {"lora_unet_not_a_module.lora_down.weight": torch.zeros(2, 3),
             "lora_unet_not_a_module.lora_up.weight": torch.zeros(3, 2)}
    l1 = lora(tmp_path / "a.safetensors", SD1, "sd1", 2, 1.0, 1, extra=bogus)
    l2 = lora(tmp_path / "b.safetensors", SD1, "sd1", 3, 3.0, 2, conv=True)
    blocks = "OUTALL"     # 17 values: BASE 1, IN01/IN02/IN04/.. 0, M00 0, OUT03–OUT11 1
    res = bake(model, [LoraSpec(l1, 0.7), LoraSpec(l2, -1.2, blocks)], str(tmp_path / "o.safetensors"),
               dtype="fp32", device="cpu", hash_inputs=False)
    assert res.unmatched == ["a.safetensors: lora_unet_not_a_module"]
    w0, out = load_file(model), load_file(res.path)
    f1, f2 = load_lora(l1), load_lora(l2)
    weights2 = {"BASE": 1.0, "IN01": 0.0, "M00": 0.0, "OUT11": 1.0, "IN00": 1.0}
    from merger.lora.keymap import checkpoint_target
    from merger.arch import get_arch
    want = {k: v.double() for k, v in w0.items() if v.is_floating_point()}
    for f, r, bw in ((f1, 0.7, None), (f2, -1.2, weights2)):
        for n, m in f.modules.items():
            t = checkpoint_target(n, "sd1")
            if t is None:
                continue
            b = 1.0 if bw is None else bw[get_arch("sd1").block_of(t.key)]
            want[t.key] += r * b * module_delta(m, tuple(w0[t.key].shape), dtype=torch.float64)
    for k, v in want.items():
        assert torch.allclose(out[k].double(), v, atol=1e-5), k
    assert torch.equal(out["cond_stage_model.transformer.text_model.embeddings.position_ids"],
                       w0["cond_stage_model.transformer.text_model.embeddings.position_ids"])
    assert torch.equal(out["first_stage_model.decoder.conv_in.weight"], w0["first_stage_model.decoder.conv_in.weight"])


def test_inpainting_conv_in_is_zero_padded(tmp_path):
    model = ckpt(tmp_path / "m.safetensors", SD1)
    g = torch.Generator().manual_seed(3)
    down, up = torch.randn(2, 4, 3, 3, generator=g), torch.randn(8, 2, 1, 1, generator=g)
    l1 = str(tmp_path / "ci.safetensors")
    save_file({"lora_unet_conv_in.lora_down.weight": down, "lora_unet_conv_in.lora_up.weight": up,
               "lora_unet_conv_in.alpha": torch.tensor(2.0)}, l1)
    out = load_file(bake(model, [LoraSpec(l1, 1.0)], str(tmp_path / "o.safetensors"), dtype="fp32",
                         device="cpu", hash_inputs=False).path)
    w = load_file(model)[U + "input_blocks.0.0.weight"]
    d = (up.reshape(8, 2) @ down.reshape(2, -1)).reshape(8, 4, 3, 3)
    assert torch.allclose(out[U + "input_blocks.0.0.weight"][:, :4], w[:, :4] + d, atol=1e-5)
    assert torch.equal(out[U + "input_blocks.0.0.weight"][:, 4:], w[:, 4:])


SD2 = {"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (24, 8),
       "cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight": (8, 8),
       U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 1024)}


def test_sd2_qkv_go_to_in_proj_thirds_and_fp16_output(tmp_path):
    model = ckpt(tmp_path / "m.safetensors", SD2, dtype=torch.float16)
    l1 = lora(tmp_path / "a.safetensors", SD2, "sd2", 2, 1.0, 4)
    out = load_file(bake(model, [LoraSpec(l1, 1.0)], str(tmp_path / "o.safetensors"), device="cpu",
                         hash_inputs=False).path)
    f = load_lora(l1)
    k = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
    w = load_file(model)[k].double()
    q, kk, v = (module_delta(f.modules[f"lora_te_text_model_encoder_layers_0_self_attn_{x}_proj"], dtype=torch.float64)
                for x in "qkv")
    assert out[k].dtype == torch.float16
    assert torch.allclose(out[k].double(), w + torch.cat([q, kk, v]), atol=2e-3)


def test_loha_bake_and_shape_mismatch(tmp_path):
    model = ckpt(tmp_path / "m.safetensors", SD1)
    g = torch.Generator().manual_seed(5)
    n = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    t = {f"{n}.hada_w1_a": torch.randn(8, 2, generator=g), f"{n}.hada_w1_b": torch.randn(2, 8, generator=g),
         f"{n}.hada_w2_a": torch.randn(8, 2, generator=g), f"{n}.hada_w2_b": torch.randn(2, 8, generator=g),
         f"{n}.alpha": torch.tensor(1.0)}
    p = str(tmp_path / "h.safetensors")
    save_file(t, p)
    out = load_file(bake(model, [LoraSpec(p, 2.0)], str(tmp_path / "o.safetensors"), dtype="fp32", device="cpu",
                         hash_inputs=False).path)
    key = U + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    d = 0.5 * (t[f"{n}.hada_w1_a"] @ t[f"{n}.hada_w1_b"]) * (t[f"{n}.hada_w2_a"] @ t[f"{n}.hada_w2_b"])
    assert torch.allclose(out[key], load_file(model)[key] + 2.0 * d, atol=1e-5)
    bad = str(tmp_path / "bad.safetensors")
    save_file({f"{n}.lora_down.weight": torch.zeros(2, 5), f"{n}.lora_up.weight": torch.zeros(8, 2)}, bad)
    with pytest.raises(AlloyError, match="another model family"):
        bake(model, [LoraSpec(bad, 1.0)], str(tmp_path / "o2.safetensors"), device="cpu", hash_inputs=False)


def test_extract_then_bake_reproduces_tuned(tmp_path):
    base = ckpt(tmp_path / "base.safetensors", SD1)
    true = lora(tmp_path / "true.safetensors", SD1, "sd1", 2, 2.0, 7, conv=True)
    tuned = bake(base, [LoraSpec(true, 1.0)], str(tmp_path / "tuned.safetensors"), dtype="fp32", device="cpu",
                 hash_inputs=False).path
    res = extract(tuned, base, str(tmp_path / "x.safetensors"), rank=4, conv_rank=4, clamp_quantile=1,
                  dtype="fp32", device="cpu")
    assert res.overall_error < 1e-5
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in res.ranks
    back = load_file(bake(base, [LoraSpec(res.path, 1.0)], str(tmp_path / "back.safetensors"), dtype="fp32",
                          device="cpu", hash_inputs=False).path)
    t = load_file(tuned)
    for k in t:
        assert torch.allclose(back[k].float(), t[k].float(), atol=1e-4), k
    # rank 1 < true rank 2: error equals the discarded spectrum of each ΔW, and TE skipping works
    true_te_free = lora(tmp_path / "unet_only.safetensors", SD1, "sd1", 2, 2.0, 8,
                        only=lambda n: n.startswith("lora_unet_"))
    tuned2 = bake(base, [LoraSpec(true_te_free, 1.0)], str(tmp_path / "t2.safetensors"), dtype="fp32", device="cpu",
                  hash_inputs=False).path
    r1 = extract(tuned2, base, str(tmp_path / "x1.safetensors"), rank=1, clamp_quantile=1, dtype="fp32", device="cpu")
    assert not any(n.startswith("lora_te") for n in r1.ranks)
    assert any("text encoders" in m for m in r1.messages)
    w0, w1 = load_file(base), load_file(tuned2)
    key = U + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    s = torch.linalg.svdvals((w1[key] - w0[key]).double())
    want = float((s[1:] ** 2).sum().sqrt() / (s ** 2).sum().sqrt())
    assert r1.errors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"] == pytest.approx(want, rel=1e-3)
