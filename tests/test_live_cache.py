"""Source cache (no disk reads on re-merges), conversions and Lora backup handling."""
import os

import pytest
import torch

from tests.webui_standin.harness import CountingOpener, diff_keys, make_world, snapshot


def _session(w, **kw):
    from merger.session import Session
    from merger.webui import WebUIHost
    return Session(WebUIHost(), str(w.tmp / "data"), **kw)


def _recipe(w, **kw):
    from merger.recipe import Recipe
    return Recipe(model_a=w.paths["a"], model_b=w.paths["b"], **kw)


def test_second_merge_reads_no_disk(tmp_path):
    w = make_world(tmp_path)
    opener = CountingOpener()
    s = _session(w, opener=opener)
    s.merge_live(_recipe(w, alpha=0.3))
    first = opener.total()
    assert first >= 2 * 250
    rep = s.merge_live(_recipe(w, alpha=0.6))
    assert opener.total() == first            # every tensor came from RAM
    assert rep.keys_from_cache > 250
    s.restore()
    assert opener.total() == first            # restore reads A from the cache too


def test_cache_budget_lru_and_file_change(tmp_path):
    from merger.cache import SourceCache
    w = make_world(tmp_path)
    opener = CountingOpener()
    cache = SourceCache(200, opener=opener)
    src = cache.open(w.paths["b"], "model B")
    keys = src.keys()[:40]
    for k in keys:
        src.read(k)
    st = cache.stats()
    assert st.bytes <= 200 and st.entries < 40
    n = opener.total()
    src.read(keys[-1])                      # most recent: still cached
    assert opener.total() == n
    src.read(keys[0])                       # evicted: read again
    assert opener.total() == n + 1
    buf = torch.empty(64, dtype=torch.uint8)
    t = src.read(keys[-1], buf)
    assert t.data_ptr() == buf.data_ptr() and torch.equal(t, src.read(keys[-1]))
    os.utime(w.paths["b"], ns=(1, 1))       # file changed: a different file
    src2 = cache.open(w.paths["b"], "model B")
    assert src2.fid != src.fid and cache.stats().files == 1
    src2.read(keys[-1])
    assert opener.total() == n + 2


def test_reproducing_conversion_detects_fp8_double_rounding():
    from merger.live import reproducing_conversion
    x = torch.tensor([0.17965184152126312, -0.14839652180671692, -0.08203338086605072])
    live = x.half().to(torch.float8_e4m3fn)
    assert reproducing_conversion(x, live) == "via_fp16"
    assert reproducing_conversion(x, x.to(torch.float8_e4m3fn)) == "cast"
    assert reproducing_conversion(x, x.half()) == "cast"
    assert reproducing_conversion(x, x.half() + 1) is None
    assert reproducing_conversion(None, x) is None


def test_mha_lora_backups_are_reset_like_networks_py():
    from tests.webui_standin.harness import install
    install()
    import networks
    from merger.live import reset_lora_state
    m = torch.nn.Sequential(torch.nn.MultiheadAttention(4, 2)).requires_grad_(False)
    networks.assign_network_names(m)
    mha = m[0]
    base_in, base_out = mha.in_proj_weight.detach().clone(), mha.out_proj.weight.detach().clone()
    networks.load_networks([("l", {"0": torch.ones(12, 4)}, 1.0)])
    networks.apply_to_model(m)
    assert not torch.equal(mha.in_proj_weight, base_in)
    with torch.no_grad():                                    # a merge writes new weights ...
        reset_lora_state(m)
        assert torch.equal(mha.in_proj_weight, base_in)       # ... after the LoRA delta was undone
        mha.in_proj_weight.add_(2.0)
    merged = mha.in_proj_weight.detach().clone()
    networks.apply_to_model(m)                                # same LoRA again: on the merged weights
    assert torch.allclose(mha.in_proj_weight, merged + 1)
    networks.load_networks([])
    networks.apply_to_model(m)
    assert torch.equal(mha.in_proj_weight, merged) and torch.equal(mha.out_proj.weight, base_out)


def test_prompt_lora_sits_on_merged_weights_and_removal_returns_to_merged(tmp_path):
    from modules import processing
    w = make_world(tmp_path)
    layer = "model_diffusion_model_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    delta = torch.full((3, 3), 0.25)
    lora = [("style", {layer: delta}, 1.0)]
    orig = snapshot(w.model)
    processing.process_images(processing.StableDiffusionProcessing(loras=lora))   # LoRA before any merge
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.5))
    merged = snapshot(w.model)
    assert not torch.equal(merged[key], orig[key])
    out = processing.process_images(processing.StableDiffusionProcessing(loras=lora))
    assert torch.allclose(out.images[0][key].float(), merged[key].float() + 0.25, atol=2e-3)
    out = processing.process_images(processing.StableDiffusionProcessing(loras=[]))
    assert not diff_keys(merged, out.images[0])              # back to merged, not to the original
    processing.process_images(processing.StableDiffusionProcessing(loras=lora))
    s.restore()                                              # restore with a LoRA applied
    out = processing.process_images(processing.StableDiffusionProcessing(loras=[]))
    assert not diff_keys(orig, out.images[0])
    out = processing.process_images(processing.StableDiffusionProcessing(loras=lora))
    assert torch.allclose(out.images[0][key].float(), orig[key].float() + 0.25, atol=2e-3)


def test_held_files_are_not_evicted_for_each_other(tmp_path):
    """Sources larger than the budget: LRU would evict each tensor just before a sweep needs it again
    (nothing would ever hit). The merge's own files are held: what fits stays, the rest is re-read."""
    from merger.cache import SourceCache
    w = make_world(tmp_path)
    opener = CountingOpener()
    cache = SourceCache(2000, opener=opener)
    a, b = cache.open(w.paths["a"], "model A"), cache.open(w.paths["b"], "model B")
    cache.hold([a.fid, b.fid])
    keys = [k for k in a.keys() if k in b][:60]

    def sweep():
        n = opener.total()
        for k in keys:
            a.read(k)
            b.read(k)
        return opener.total() - n
    first = sweep()
    st = cache.stats()
    assert first == 2 * len(keys) and 0 < st.bytes <= 2000 and st.entries < 2 * len(keys)
    again = sweep()
    assert again == 2 * len(keys) - st.entries          # every cached tensor hits, every time
    assert sweep() == again and cache.stats().entries == st.entries
    # Another merge (other files held): the old files' tensors give way, least recent first.
    c = cache.open(w.paths["c"], "model C")
    cache.hold([a.fid, c.fid])
    n = opener.total()
    for k in keys[:5]:
        c.read(k)
    assert cache.stats().bytes <= 2000
    assert all(cache.peek(c.fid, k) is not None for k in keys[:5])     # B's tensors made room
    assert all(cache.peek(a.fid, k) is not None for k in keys[:3])     # A is held: kept
    for k in keys[:5]:
        c.read(k)
    assert opener.total() == n + 5
    cache.set_budget(0)                                  # a smaller budget drops held tensors too
    assert cache.stats().entries == 0


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_reproduces_equals_converting_the_whole_tensor(monkeypatch, chunk):
    """The piecewise check of the first merge's capture gives the whole-tensor comparison's answer:
    casts up and down, rounding through fp16, integers, signed zeros, a difference in the last
    piece only; a NaN may fail the check at a piece boundary (then the key is kept as a copy), but
    it never passes where the file does not reproduce the tensor."""
    from merger import live_targets as lt
    monkeypatch.setattr(lt, "CHECK_CHUNK", chunk)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 9, generator=g)
    x.view(-1)[4] = -0.0
    zero = x.half().float()
    zero.view(-1)[4] = 0.0                                        # +0 where the file has −0
    last = x.half().float()
    last.view(-1)[-1] += 1
    cases = [(x.half(), x.half().float(), None, True), (x, x.half(), None, True),
             (x, x.half().float(), torch.float16, True), (x, x.half().float(), None, False),
             (x.bfloat16(), x.bfloat16().float(), None, True),
             (torch.arange(77).reshape(1, 77), torch.arange(77).reshape(1, 77), None, True),
             (x.half(), zero, None, False), (x.half(), last, None, False)]
    for a, live, via, want in cases:
        assert lt.bitwise_equal(live, lt.convert(a, via, live.dtype, live.device)) == want
        assert lt.reproduces(live, a, via) == want, (a.dtype, live.dtype, via)
    y = x.half()
    y.view(-1)[3] = float("nan")
    other_nan = y.float()
    other_nan.view(torch.int32).view(-1)[3] ^= 1                  # another NaN payload
    assert not lt.reproduces(other_nan, y, None)


def test_write_converts_the_pieces_the_check_compared(monkeypatch):
    """After a capture found that the file reproduces a live tensor (NaN included), writing the
    file's tensor back gives exactly those bits."""
    from merger import live_targets as lt
    monkeypatch.setattr(lt, "CHECK_CHUNK", 7)
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(2)).half()
    x.view(-1)[3] = float("nan")
    holder = torch.nn.Module()
    live = torch.empty(5, 9)
    holder.register_buffer("x", live)
    t = lt.single(holder, "x")
    lt.write(t, x)
    assert lt.reproduces(holder.x, x, None)
    kept = holder.x.clone()
    holder.x.mul_(2)
    lt.write(t, x)
    assert torch.equal(holder.x.view(torch.int32), kept.view(torch.int32))
