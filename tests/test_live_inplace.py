"""In-place live merges into a real module tree (WebUI stand-in): same tensors, exact restore."""
import random

import pytest
import torch

from tests.webui_standin.harness import diff_keys, make_world, same_bits, snapshot


def _session(w, **kw):
    from merger.session import Session
    from merger.webui import WebUIHost
    return Session(WebUIHost(), str(w.tmp / "data"), **kw)


def _recipe(w, **kw):
    from merger.recipe import Recipe
    return Recipe(model_a=w.paths["a"], model_b=w.paths["b"], **kw)


def test_merge_writes_into_the_same_tensors_and_nothing_else(tmp_path):
    w = make_world(tmp_path)
    before = snapshot(w.model)
    ptrs = {k: (id(v), v.data_ptr()) for k, v in list(w.model.named_parameters()) + list(w.model.named_buffers())}
    s = _session(w)
    rep = s.merge_live(_recipe(w, alpha=0.5))
    after = snapshot(w.model)
    assert rep.keys_merged > 250
    now = {k: (id(v), v.data_ptr()) for k, v in list(w.model.named_parameters()) + list(w.model.named_buffers())}
    assert now == ptrs                                 # same Parameter objects, same storage
    changed = diff_keys(before, after)
    merged = {kp.key for kp in s.live.plan.items if kp.action == "merge"}
    assert changed and changed <= merged
    assert not any("position_ids" in k or "alphas_cumprod" in k for k in changed)
    from safetensors.torch import load_file
    a, b = load_file(w.paths["a"]), load_file(w.paths["b"])
    k = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    want = (a[k].float() * 0.5 + b[k].float() * 0.5).half()
    assert torch.allclose(after[k].float(), want.float(), atol=1e-3)


@pytest.mark.parametrize("no_half", [False, True])
def test_restore_is_bit_exact_over_random_cycles(tmp_path, no_half):
    w = make_world(tmp_path, no_half=no_half)
    dtype = torch.float32 if no_half else torch.float16
    assert w.model.get_submodule("model.diffusion_model.out.2").weight.dtype == dtype
    orig = snapshot(w.model)
    s = _session(w)
    rng = random.Random(3)
    for i in range(3):
        s.merge_live(_recipe(w, alpha=rng.random(), alpha_blocks=None if i % 2 else "0.2," * 25 + "0.7"))
        if rng.random() < 0.5:
            s.merge_live(_recipe(w, alpha=rng.random()))
        assert diff_keys(orig, snapshot(w.model))
        s.restore()
        assert not diff_keys(orig, snapshot(w.model))
    assert all(o.kept is None for o in s.live.originals.values())


def test_foreign_vae_uses_kept_copies_and_restores_exactly(tmp_path):
    w = make_world(tmp_path, vae=True)
    orig = snapshot(w.model)
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.3))
    kept = {k for k, o in s.live.originals.items() if o.kept is not None}
    assert kept and all(k.startswith("first_stage_model.") for k in kept)
    assert all(o.kept is None for k, o in s.live.originals.items() if not k.startswith("first_stage_model."))
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))
    s.merge_live(_recipe(w, alpha=0.6))
    s.merge_live(_recipe(w, alpha=0.6, exclude="VAE"))      # VAE keys go back to the foreign VAE
    now = snapshot(w.model)
    assert not {k for k in diff_keys(orig, now) if k.startswith("first_stage_model.")}
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))


@pytest.mark.parametrize("cache_fp16", [False, True])
def test_fp8_storage_round_trip(tmp_path, cache_fp16):
    w = make_world(tmp_path, fp8=True, cache_fp16=cache_fp16, file_dtype=torch.float32)
    lin = w.model.get_submodule("model.diffusion_model.input_blocks.1.1.proj_in")
    assert lin.weight.dtype == torch.float8_e4m3fn
    orig = snapshot(w.model)
    orig_fp16 = getattr(lin, "fp16_weight", None)
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.4))
    assert lin.weight.dtype == torch.float8_e4m3fn
    assert diff_keys(orig, snapshot(w.model))
    fp8_keys = [k for k, v in w.model.state_dict().items() if v.dtype == torch.float8_e4m3fn]
    assert fp8_keys and all(s.live.originals[k].kept is None for k in fp8_keys if k in s.live.originals)
    if cache_fp16:
        assert lin.fp16_weight is not orig_fp16
        assert torch.allclose(lin.fp16_weight.float(), lin.weight.float(), atol=0.2, rtol=0.13)
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))
    if cache_fp16:
        assert lin.fp16_weight is orig_fp16


def test_interrupt_restores_the_original(tmp_path):
    from merger.errors import Interrupted
    w = make_world(tmp_path)
    orig = snapshot(w.model)
    s = _session(w)
    calls = {"n": 0}

    def progress(done, total, key):
        calls["n"] += 1
        if done == 50:
            w.shared.state.interrupted = True
    with pytest.raises(Interrupted, match="original model was restored"):
        s.merge_live(_recipe(w, alpha=0.5), progress=progress)
    assert not diff_keys(orig, snapshot(w.model))
    assert s.live is None or s.live.recipe is None
    w.shared.state.interrupted = False
    s.merge_live(_recipe(w, alpha=0.5))
    s.merge_live(_recipe(w, alpha=0.7))
    s.interrupt()                       # a stale interrupt does not leak into the next merge
    s.merge_live(_recipe(w, alpha=0.2))
    assert s.live.recipe.alpha == 0.2


def test_second_merge_while_busy_is_refused(tmp_path):
    import threading
    from merger.session import Busy
    w = make_world(tmp_path)
    s = _session(w)
    started, release, errors = threading.Event(), threading.Event(), []

    def slow_progress(done, total, key):
        if done == 1:
            started.set()
            release.wait(10)
    t = threading.Thread(target=lambda: s.merge_live(_recipe(w, alpha=0.5), progress=slow_progress))
    t.start()
    assert started.wait(10)
    try:
        with pytest.raises(Busy, match="busy"):
            s.merge_live(_recipe(w, alpha=0.1))
        with pytest.raises(Busy):
            s.restore()
        assert s.status()["busy"]
    finally:
        release.set()
        t.join(10)
    assert s.live.recipe.alpha == 0.5


def test_model_a_not_loaded_is_loaded_first(tmp_path):
    from safetensors.torch import load_file
    w = make_world(tmp_path)
    s = _session(w)
    from merger.recipe import Recipe
    r = Recipe(model_a=w.paths["c"], model_b=w.paths["b"], alpha=0.0)
    s.merge_live(r)
    assert w.model.sd_model_checkpoint == w.paths["c"]
    c = load_file(w.paths["c"])
    k = "model.diffusion_model.out.2.weight"
    assert same_bits(w.model.state_dict()[k], c[k])


def test_partial_remerge_recomputes_only_changed_blocks(tmp_path):
    w = make_world(tmp_path)
    s = _session(w)
    base = ["0.5"] * 26
    s.merge_live(_recipe(w, alpha_blocks=",".join(base)))
    changed = list(base)
    changed[3] = "0.9"        # IN02
    rep = s.merge_live(_recipe(w, alpha_blocks=",".join(changed)))
    keys = {kp.key for kp in s.live.plan.items if kp.block == s.live.plan.arch.block_ids[3] and kp.action == "merge"}
    assert keys and rep.keys_merged == len(keys)
    rep = s.merge_live(_recipe(w, alpha_blocks=",".join(changed)))
    assert rep.keys_merged == 0          # identical recipe: nothing merged again


def test_medvram_style_cpu_params_and_moved_data(tmp_path):
    """Hooks that move modules swap .data; writes go wherever the tensor lives at write time."""
    w = make_world(tmp_path)
    s = _session(w)
    orig = snapshot(w.model)
    w.model.model.diffusion_model.to(torch.float16)       # _apply swaps .data of every parameter
    s.merge_live(_recipe(w, alpha=0.5))
    w.model.model.diffusion_model.to(torch.float16)
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))
