"""Grouped live re-merges (merger/livegroups.py) equal the per-key path bit for bit."""
import pytest
import torch

from tests.webui_standin.harness import diff_keys, make_world, snapshot

MODES = [("weight_sum", "normal"), ("add_difference", "normal"), ("triple_sum", "normal"),
         ("sum_twice", "normal"), ("add_difference", "trainDifference"), ("weight_sum", "self")]
# (files, WebUI --no-half): fp16 files into a half model, fp16 and fp32 files into an fp32 model
PRECISIONS = [(torch.float16, False), (torch.float16, True), (torch.float32, True), (torch.float32, False)]


def _session(w, **kw):
    from merger.session import Session
    from merger.webui import WebUIHost
    return Session(WebUIHost(), str(w.tmp / "data"), **kw)


def _recipe(w, mode="weight_sum", calc="normal", **kw):
    from merger.recipe import Recipe
    c = w.paths["c"] if mode != "weight_sum" else None
    return Recipe(model_a=w.paths["a"], model_b=w.paths["b"], model_c=c, mode=mode, calc=calc, **kw)


def _per_key(w, recipe) -> dict:
    """The model after `recipe` merged by a fresh session (the per-key path), then restored."""
    s = _session(w)
    s.merge_live(recipe)
    assert s.live.groups is not None
    out = snapshot(w.model)
    s.restore()
    return out


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.uint8) if x.is_floating_point() else x


def assert_same_bits(got: dict, want: dict) -> None:
    bad = [k for k in want if not torch.equal(_bits(got[k]), _bits(want[k]))]
    assert not bad, f"{len(bad)} keys differ, e.g. {bad[:3]}"


@pytest.fixture(params=[4, 1 << 16], ids=["big-keys", "packed"])
def small(request, monkeypatch):
    """SMALL = 4: most keys of the tiny model take the big-key path, in pieces of 37 elements (a
    ragged last piece in most keys); the default packs them all."""
    from merger import livegroups
    monkeypatch.setattr(livegroups, "SMALL", request.param)
    if request.param == 4:
        monkeypatch.setattr(livegroups, "CPU_CHUNK", 37)
    return request.param


@pytest.mark.parametrize("mode,calc", MODES)
@pytest.mark.parametrize("file_dtype,no_half", PRECISIONS)
def test_grouped_remerge_equals_per_key_path(tmp_path, small, mode, calc, file_dtype, no_half):
    w = make_world(tmp_path, no_half=no_half, file_dtype=file_dtype)
    orig = snapshot(w.model)
    s = _session(w)
    s.merge_live(_recipe(w, mode, calc, alpha=0.3, beta=0.2))
    lg = s.live.groups
    assert lg is not None and len(lg.grouped) > 100 and not lg.rest
    assert any(g.big for g in lg.groups) == (small == 4)
    second = _recipe(w, mode, calc, alpha=0.7, beta=0.4)
    rep = s.merge_live(second)
    assert s.live.groups is lg and rep.keys_merged == len(lg.grouped)
    grouped = snapshot(w.model)
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))            # restore after a grouped merge: bit-exact
    want = _per_key(w, second)
    assert diff_keys(orig, want)
    assert_same_bits(grouped, want)


def test_block_weights_recompute_only_changed_blocks_and_match(tmp_path, small):
    w = make_world(tmp_path, no_half=True)
    s = _session(w)
    base = ["0.5"] * 26
    s.merge_live(_recipe(w, alpha_blocks=",".join(base)))
    changed = list(base)
    changed[3], changed[20] = "0.9", "0.0"
    rep = s.merge_live(_recipe(w, alpha_blocks=",".join(changed)))
    arch = s.live.plan.arch
    blocks = {arch.block_ids[3], arch.block_ids[20]}
    keys = {kp.key for kp in s.live.plan.items if kp.block in blocks and kp.action == "merge"}
    assert keys and rep.keys_merged == len(keys)
    assert s.merge_live(_recipe(w, alpha_blocks=",".join(changed))).keys_merged == 0
    grouped = snapshot(w.model)
    s.restore()
    assert_same_bits(grouped, _per_key(w, _recipe(w, alpha_blocks=",".join(changed))))


def test_leaving_the_groups_keeps_signatures_and_switches_back_to_keep_a(tmp_path):
    """A grouped merge, then an include list (per-key path: the other keys go back to A), then
    the plain recipe again: every step equals a fresh per-key merge of its recipe."""
    w = make_world(tmp_path, no_half=True)
    orig = snapshot(w.model)
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.2))
    s.merge_live(_recipe(w, alpha=0.6))                       # grouped
    rep = s.merge_live(_recipe(w, alpha=0.6, include="IN01"))  # per-key path: most keys back to A
    assert rep.keys_merged == 0                               # IN01 is at 0.6 already (signatures kept)
    only = snapshot(w.model)
    merged = {k for k in orig if not torch.equal(_bits(orig[k]), _bits(only[k]))}
    assert merged and all(".input_blocks.1." in k for k in merged)
    s.merge_live(_recipe(w, alpha=0.6))
    s.merge_live(_recipe(w, alpha=0.9))                       # grouped again
    assert s.live.groups is not None
    final = snapshot(w.model)
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))
    assert_same_bits(final, _per_key(w, _recipe(w, alpha=0.9)))


def test_interrupt_in_a_grouped_merge_restores_the_original(tmp_path, small):
    from merger.errors import Interrupted
    w = make_world(tmp_path, no_half=True)
    orig = snapshot(w.model)
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.2))
    calls = []

    def progress(done, total, key):
        calls.append(key)
        s.interrupt()
    with pytest.raises(Interrupted, match="original model was restored"):
        s.merge_live(_recipe(w, alpha=0.8), progress=progress)
    assert len(calls) == 1
    assert not diff_keys(orig, snapshot(w.model)) and s.live.groups is None and not s.live.originals
    s.merge_live(_recipe(w, alpha=0.8))
    assert_same_bits(snapshot(w.model), _per_key_after_restore(s, w, _recipe(w, alpha=0.8)))


def _per_key_after_restore(s, w, recipe):
    got = snapshot(w.model)
    s.restore()
    want = _per_key(w, recipe)
    assert_same_bits(got, want)
    return want


@pytest.mark.parametrize("no_half", [False, True])
def test_overflow_in_a_grouped_merge_names_the_key_and_restores(tmp_path, small, no_half):
    """fp16 output: a value beyond 65504 is refused with the key and the files named."""
    from safetensors.torch import load_file, save_file
    from merger.errors import AlloyError
    w = make_world(tmp_path, no_half=no_half)
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    sd = load_file(w.paths["b"])
    sd[key] = torch.full_like(sd[key], 40000.0)
    save_file(sd, w.paths["b"])
    orig = snapshot(w.model)
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.5, dtype="fp16"))
    assert s.live.groups is not None
    with pytest.raises(AlloyError) as e:
        s.merge_live(_recipe(w, alpha=1.8, dtype="fp16"))
    msg = str(e.value)
    assert key in msg and "too large for the output precision" in msg and "B.safetensors" in msg
    assert not diff_keys(orig, snapshot(w.model)) and s.live.groups is None


def test_moved_parameters_drop_the_groups(tmp_path):
    """Hooks that swap .data (medvram, casts) make the next merge take the per-key path."""
    w = make_world(tmp_path, no_half=True)
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.3))
    unet = w.model.model.diffusion_model
    unet.to(torch.float16)
    rep = s.merge_live(_recipe(w, alpha=0.6))
    assert rep.keys_merged > 0 and s.live.groups is not None
    assert w.model.get_submodule("model.diffusion_model.out.2").weight.dtype == torch.float16
    got = snapshot(w.model)
    s.restore()
    want = _per_key(w, _recipe(w, alpha=0.6))
    assert_same_bits(got, want)


@pytest.mark.parametrize("cache_gb", [0.0, 1e-6])
def test_groups_form_when_the_cache_keeps_nothing(tmp_path, cache_gb):
    """With no cache (or one too small for the sources, the WebUI default beside two SDXL files) the
    small keys are read again for the packed buffers: re-merges still take the grouped path."""
    from merger.settings import Settings
    w = make_world(tmp_path, no_half=True)
    s = _session(w, settings=Settings(cache_gb=cache_gb))
    s.merge_live(_recipe(w, alpha=0.3))
    lg = s.live.groups
    assert lg is not None and len(lg.grouped) > 100
    second = _recipe(w, alpha=0.6)
    s.merge_live(second)
    assert s.live.groups is lg
    grouped = snapshot(w.model)
    s.restore()
    assert_same_bits(grouped, _per_key(w, second))


def test_groups_know_their_inputs_magnitudes(tmp_path, small):
    """Built groups hold max |x| of each input: of the packed buffers, and of each big key the cache
    holds (taken from the tensors themselves)."""
    from safetensors.torch import load_file
    w = make_world(tmp_path, no_half=True)
    s = _session(w)
    s.merge_live(_recipe(w, "add_difference", alpha=0.3))
    files = {slot: load_file(p) for slot, p in w.paths.items()}
    lg = s.live.groups
    for g in lg.groups:
        if g.keys:
            assert g.mags == {slot: max(float(files[slot][k].abs().max()) for k in g.keys) for slot in "abc"}
        for (key, _), mags in zip(g.big, g.big_mags):
            assert mags == {slot: float(files[slot][key].abs().max()) for slot in "abc"}
    assert sum(len(g.big) for g in lg.groups) == (0 if small > 4 else len(lg.grouped) - sum(len(g.keys) for g in lg.groups))


def test_a_grouped_remerge_skips_the_check_only_where_the_bound_allows(tmp_path, monkeypatch, small):
    """fp16 output: at α = 0.5 every result is bounded well below 65504 (no check); α = 1.8 with a
    B key at 40000 is not (that key's results are checked, and refused)."""
    from safetensors.torch import load_file, save_file
    from merger.errors import AlloyError
    from merger.kernels import FiniteCheck
    w = make_world(tmp_path)
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    sd = load_file(w.paths["b"])
    sd[key] = torch.full_like(sd[key], 40000.0)
    save_file(sd, w.paths["b"])
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.3, dtype="fp16"))
    checked = []
    add = FiniteCheck.add
    monkeypatch.setattr(FiniteCheck, "add", lambda self, keys, *a: (checked.extend(keys), add(self, keys, *a)))
    s.merge_live(_recipe(w, alpha=0.5, dtype="fp16"))
    assert s.live.groups is not None and checked == []
    with pytest.raises(AlloyError, match="too large for the output precision"):
        s.merge_live(_recipe(w, alpha=1.8, dtype="fp16"))
    assert key in checked


def test_nan_in_a_source_is_still_refused_after_grouping(tmp_path, small):
    """A NaN in A's file that the first merge did not use (α = 1 takes B as it is) makes A's
    magnitude infinite: the next re-merge checks that key and refuses it."""
    from safetensors.torch import load_file, save_file
    from merger.errors import AlloyError
    w = make_world(tmp_path, no_half=True, file_dtype=torch.float32)
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    sd = load_file(w.paths["a"])
    sd[key].view(-1)[3] = float("nan")
    save_file(sd, w.paths["a"])                # the loaded model keeps its own (finite) copy
    s = _session(w)
    s.merge_live(_recipe(w, alpha=1.0))
    assert s.live.groups is not None and key in s.live.groups.grouped
    with pytest.raises(AlloyError, match="NaN or infinite") as e:
        s.merge_live(_recipe(w, alpha=0.5))
    assert key in str(e.value)
