"""Live merges into the Forge stand-in: the merged model holds exactly what loading the merged file
gives, restore is bit-exact, parameters stay inference tensors, quantised weights are refused."""
import pytest
import torch

from tests.forge_standin.harness import generate, load_checkpoint, make_world
from tests.webui_standin.harness import diff_keys


def _session(w, **kw):
    from merger.forge import ForgeHost
    from merger.session import Session
    return Session(ForgeHost(), str(w.tmp / "data"), **kw)


def _recipe(w, **kw):
    from merger.recipe import Recipe
    return Recipe(model_a=w.paths["a"], model_b=w.paths["b"], **kw)


def _image():
    return generate().images[0]


CPU = {}                                                    # Forge on CPU: fp32 UNet/VAE, fp16 CLIP
GPU = {"unet": torch.float16, "vae": torch.float16}         # fp16 everywhere


@pytest.mark.parametrize("arch,dtypes,save", [("sd1", CPU, "fp32"), ("sd1", GPU, "fp16"), ("sdxl", CPU, "fp32"),
                                              ("sd2", CPU, "fp32")])
def test_live_merge_equals_loading_the_merged_file_and_restores_exactly(forge, tmp_path, arch, dtypes, save):
    """Saved at the precision the model holds, the merged file loads into exactly the live merge
    (CLIP embeddings included: fp32 live, rounded through the fp16 storage like Forge's loader)."""
    w = make_world(tmp_path, arch, dtypes=dtypes)
    engine = w.shared.sd_model
    emb = engine.forge_objects_original.clip.cond_stage_model
    assert all(m.transformer.text_model.embeddings.token_embedding.weight.dtype == torch.float32
               for m in emb.values())                       # fp32 since the warm-up generation
    original = _image()
    s = _session(w)
    rep = s.merge_live(_recipe(w, alpha=0.3))
    assert rep.keys_merged > 100
    merged = _image()
    assert len(diff_keys(original, merged)) > 100
    s.save_live("merged", dtype=save)
    s.restore()
    assert not diff_keys(original, _image())                # restore: bit-exact
    assert w.shared.sd_model is engine                      # in place: the engine was never rebuilt
    load_checkpoint(str(w.models / "merged.safetensors"))
    assert w.shared.sd_model is not engine
    from_file = _image()
    assert set(from_file) == set(merged) and not diff_keys(merged, from_file)


def test_parameters_are_inference_tensors_and_writes_need_inference_mode(forge, tmp_path):
    w = make_world(tmp_path)
    model = w.shared.sd_model.forge_objects_original.unet.model
    p = model.diffusion_model.get_submodule("out.2").weight
    assert all(t.is_inference() for t in model.parameters())
    with torch.no_grad(), pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        torch.add(p.detach().reshape(-1), 1.0, out=p.data.reshape(-1))   # the engine computing into it
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.5))
    assert all(t.is_inference() for t in model.parameters())
    s.restore()


def test_fp8_unet_storage_round_trips_and_equals_the_file(forge, tmp_path):
    w = make_world(tmp_path, dtypes={"unet": torch.float8_e4m3fn})
    unet = w.shared.sd_model.forge_objects_original.unet.model
    assert unet.diffusion_model.get_submodule("out.2").weight.dtype == torch.float8_e4m3fn
    original = _image()
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.4))
    merged = _image()
    assert diff_keys(original, merged)
    assert unet.diffusion_model.get_submodule("out.2").weight.dtype == torch.float8_e4m3fn
    s.save_live("merged8", dtype="fp32")
    s.restore()
    assert not diff_keys(original, _image())
    load_checkpoint(str(w.models / "merged8.safetensors"))
    assert not diff_keys(merged, _image())


@pytest.mark.parametrize("kind,word", [("nf4", "nf4/fp4"), ("gguf", "GGUF")])
def test_quantised_weights_are_refused_before_anything_changes(forge, tmp_path, kind, word):
    from backend.nn import quantise
    from merger.errors import AlloyError
    w = make_world(tmp_path)
    with torch.inference_mode():
        assert quantise(w.shared.sd_model.forge_objects_original.unet.model.diffusion_model, kind) > 10
    before = _image()
    s = _session(w)
    with pytest.raises(AlloyError, match=rf"stores model\.diffusion_model\.\S+ as {word} quantised"):
        s.merge_live(_recipe(w, alpha=0.5))
    assert not diff_keys(before, _image())
    s.merge_live(_recipe(w, alpha=0.5, exclude="IN00-OUT11"))    # the text encoder / VAE alone are fine
    assert diff_keys(before, _image())
    s.restore()
    assert not diff_keys(before, _image())


def _lora(w):
    """A prompt LoRA touching one UNet and one text-encoder weight (stand-in format)."""
    unet = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    clip = "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    w.networks.available["style"] = {("unet", unet): torch.full((6, 6), 0.25), ("clip", clip): torch.full((6, 6), 0.5)}
    return [("style", 1.0)], "unet." + unet, "clip." + clip


def test_the_standin_lora_loader_reverts_in_place_writes_to_patched_weights(forge, tmp_path):
    """The hazard Alloy must handle (measured in the real Forge): an in-place change to a weight that
    a prompt LoRA patched is lost when the next generation without the LoRA puts the backup back."""
    w = make_world(tmp_path)
    lora, unet_key, _ = _lora(w)
    before = generate(lora).images[0][unet_key]
    live = w.shared.sd_model.forge_objects_original.unet.model
    with torch.inference_mode():
        live.get_parameter(unet_key[len("unet."):]).mul_(2.0)
    after = generate().images[0][unet_key]
    assert torch.allclose(after + 0.25, before, atol=1e-6)      # the doubled weight is gone


def test_prompt_lora_sits_on_merged_weights_and_removal_returns_to_merged(forge, tmp_path):
    w = make_world(tmp_path)
    lora, unet_key, clip_key = _lora(w)
    original = _image()
    generate(lora)                                              # LoRA patched before the merge
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.5))
    merged = _image()
    assert not torch.equal(merged[unet_key], original[unet_key])
    with_lora = generate(lora).images[0]
    assert torch.allclose(with_lora[unet_key], merged[unet_key] + 0.25, atol=1e-6)
    assert torch.allclose(with_lora[clip_key].float(), merged[clip_key].float() + 0.5, atol=2e-3)
    assert not diff_keys(merged, _image())                      # back to merged, not to the original
    generate(lora)
    s.merge_live(_recipe(w, alpha=0.8))                         # re-merge while the LoRA is on
    again = generate(lora).images[0]
    remerged = _image()
    assert torch.allclose(again[unet_key], remerged[unet_key] + 0.25, atol=1e-6)
    generate(lora)
    s.restore()                                                 # restore with the LoRA applied
    assert not diff_keys(original, _image())
    assert torch.allclose(generate(lora).images[0][unet_key], original[unet_key] + 0.25, atol=1e-6)
