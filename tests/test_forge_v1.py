"""reForge / Forge Classic (merger/forge_v1.py): prompt LoRAs as ldm_patched ModelPatcher patches
(tests/webui_standin/ldm_patched) on A1111's model object; merges and restores must take them off
first and land on the weights the next generation sees."""
import types

import torch

from tests.webui_standin.harness import diff_keys, make_world, snapshot

KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
LORA = {"style": {KEY[len("model."):]: torch.full((3, 3), 0.25)}}


def _attach(model):
    """What reForge's forge_loader.load_model_for_a1111 adds to the model object."""
    from ldm_patched.modules import model_management
    from ldm_patched.modules.model_patcher import ModelPatcher
    model_management.current_loaded_models.clear()
    unet = ModelPatcher(model.model)
    model.forge_objects = types.SimpleNamespace(unet=unet)
    model.forge_objects_original = types.SimpleNamespace(unet=unet)
    model.current_lora_hash = str([])


def _generate(model, loras=()):
    """reForge's Lora extension (networks.load_networks: a clone of the original UNet patcher with the
    prompt's LoRAs, rebuilt only when the LoRA list changes), then sampling_prepare's
    load_models_gpu, all under process_images's inference_mode; returns the weights sampled with."""
    from ldm_patched.modules import model_management
    with torch.inference_mode():
        if model.current_lora_hash != str(list(loras)):
            model.current_lora_hash = str(list(loras))
            model.forge_objects.unet = model.forge_objects_original.unet
            for name in loras:
                model.forge_objects.unet = model.forge_objects.unet.clone()
                model.forge_objects.unet.add_patches(LORA[name], 1.0)
        model_management.load_models_gpu([model.forge_objects.unet])
        return snapshot(model)


def _session(w):
    from merger.recipe import Recipe
    from merger.session import Session
    from merger.webui import WebUIHost
    s = Session(WebUIHost(), str(w.tmp / "data"))
    return s, lambda alpha: Recipe(model_a=w.paths["a"], model_b=w.paths["b"], alpha=alpha)


def test_merge_and_restore_take_prompt_lora_patches_off_first(tmp_path):
    from merger import forge_v1
    w = make_world(tmp_path)
    s, recipe = _session(w)
    orig = snapshot(w.model)
    s.merge_live(recipe(0.5))
    ref = snapshot(w.model)                                   # the merge without any LoRA around
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))

    _attach(w.model)
    assert isinstance(w.shared.sd_model, type(w.model)) and forge_v1.detected(w.model)
    lora_orig = _generate(w.model, ["style"])
    assert torch.allclose(lora_orig[KEY].float(), orig[KEY].float() + 0.25, atol=2e-3)
    from ldm_patched.modules.model_patcher import get_attr
    assert get_attr(w.model, KEY).is_inference()           # what made the plain no_grad write fail
    s.merge_live(recipe(0.5))                                 # over inference-mode LoRA patches
    assert not diff_keys(ref, _generate(w.model))             # no LoRA: exactly the merge
    with_lora = _generate(w.model, ["style"])                 # LoRA on the merged weights
    assert torch.allclose(with_lora[KEY].float(), ref[KEY].float() + 0.25, atol=2e-3)
    s.merge_live(recipe(0.3))
    s.merge_live(recipe(0.5))                                 # merge while the LoRA is patched in
    assert not diff_keys(ref, _generate(w.model))
    _generate(w.model, ["style"])
    s.restore()                                               # restore while the LoRA is patched in
    assert not diff_keys(orig, _generate(w.model))
    back = _generate(w.model, ["style"])
    assert torch.allclose(back[KEY].float(), orig[KEY].float() + 0.25, atol=2e-3)


def test_a1111_model_is_not_taken_for_forge_v1(tmp_path):
    from merger import forge_v1
    from merger.webui import WebUIHost
    w = make_world(tmp_path)
    assert not forge_v1.detected(w.model) and WebUIHost().live_model() is w.model


def test_model_a_loaded_by_alloy_stays_loaded_where_loading_does_not_record_the_option(tmp_path, monkeypatch):
    """reForge's reload_model_weights is its load_model, which never writes opts.sd_model_checkpoint
    (A1111's load_model_weights does): the next generation would load the option's checkpoint again
    and drop the merge (seen in reForge 3b56b268)."""
    from modules import processing
    w = make_world(tmp_path)
    info = {s: next(i for i in w.sd_models.checkpoints_list.values() if i.filename == w.paths[s]) for s in "ab"}
    w.sd_models.reload_model_weights(info=info["b"])            # the user's checkpoint: B
    assert w.shared.opts.data["sd_model_checkpoint"] == info["b"].title
    reload = w.sd_models.reload_model_weights

    def reforge_reload(sd_model=None, info=None, forced_reload=False):
        before = w.shared.opts.data.get("sd_model_checkpoint")
        model = reload(sd_model, info, forced_reload)
        w.shared.opts.data["sd_model_checkpoint"] = before
        return model

    monkeypatch.setattr(w.sd_models, "reload_model_weights", reforge_reload)
    s, recipe = _session(w)
    s.merge_live(recipe(0.5))                                    # loads A first
    merged = snapshot(w.shared.sd_model)
    out = processing.process_images(processing.StableDiffusionProcessing())
    assert w.shared.opts.data["sd_model_checkpoint"] == info["a"].title
    assert not diff_keys(merged, out.images[0]) and s.live is not None and s.live.dirty
