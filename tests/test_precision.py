"""TF32 is off while Alloy computes, and the program's settings come back after (merger/precision.py).

A1111 turns TF32 on at start-up for float32 matrix products and convolutions (`devices.enable_tf32`);
PyTorch allows it for cuDNN convolutions by default. The flags are process-wide and can be set on
any build, so the CPU tests set them as A1111 does and look at them from inside the merges."""
import threading

import pytest
import torch

from merger.precision import full_float32


@pytest.fixture
def tf32_on():
    """A1111's settings (torch.backends.cuda.matmul.allow_tf32 = cudnn.allow_tf32 = True), undone after."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


def _flags():
    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


def test_the_block_is_full_float32_and_the_settings_come_back(tf32_on):
    assert _flags() == ("high", True)
    with full_float32():
        assert _flags() == ("highest", False)
        with full_float32():
            assert _flags() == ("highest", False)
        assert _flags() == ("highest", False)
    assert _flags() == ("high", True)
    with pytest.raises(ValueError), full_float32():
        raise ValueError("a merge failed")
    assert _flags() == ("high", True)


def test_overlapping_merges_on_threads_restore_only_when_the_last_ends(tf32_on):
    entered, release = threading.Event(), threading.Event()

    def other():
        with full_float32():
            entered.set()
            release.wait(10)
    t = threading.Thread(target=other)
    with full_float32():
        t.start()
        entered.wait(10)
    assert _flags() == ("highest", False)          # the other merge still runs
    release.set()
    t.join(10)
    assert _flags() == ("high", True)


def _spy(monkeypatch, module, name, seen):
    real = getattr(module, name)

    def spy(*a, **kw):
        seen.append(_flags())
        return real(*a, **kw)
    monkeypatch.setattr(module, name, spy)


def test_file_and_live_merges_compute_in_full_float32(tf32_on, tmp_path, monkeypatch):
    from tests.test_live_groups import _recipe, _session
    from tests.webui_standin.harness import make_world
    seen = []
    _spy(monkeypatch, torch, "lerp", seen)
    w = make_world(tmp_path, no_half=True)
    s = _session(w)
    s.merge_live(_recipe(w, alpha=0.3))              # the per-key path (engine.execute)
    s.merge_live(_recipe(w, alpha=0.6))              # the grouped path (livegroups.apply)
    assert s.live.groups is not None
    s.merge_to_file(_recipe(w, alpha=0.4), "alloy_precision_check")  # a file merge (engine.execute)
    assert seen and set(seen) == {("highest", False)}
    assert _flags() == ("high", True)


def test_lora_tools_compute_in_full_float32(tf32_on, tmp_path, monkeypatch):
    from merger.lora import bake as bake_mod
    from merger.lora.blocks import LoraSpec
    from merger.lora.extract import extract
    from merger.lora.merge import merge_loras
    from merger.lora.resize import resize_lora
    from merger.lora import linalg
    from tests.test_lora_bake import SD1, ckpt, lora
    seen = []
    _spy(monkeypatch, bake_mod, "key_delta", seen)
    model = ckpt(tmp_path / "m.safetensors", SD1)
    other = ckpt(tmp_path / "t.safetensors", SD1, seed=5)
    l1 = lora(tmp_path / "a.safetensors", SD1, "sd1", 2, 1.0, 1)
    bake_mod.bake(model, [LoraSpec(l1, 0.7)], str(tmp_path / "o.safetensors"), dtype="fp32", device="cpu",
                  hash_inputs=False)
    _spy(monkeypatch, linalg.torch.linalg, "svd", seen)
    extract(other, model, str(tmp_path / "x.safetensors"), rank=2, device="cpu")
    merge_loras([LoraSpec(l1, 1.0), LoraSpec(str(tmp_path / "x.safetensors"), -1.0)], str(tmp_path / "mm.safetensors"),
                rank=2, device="cpu")
    resize_lora(str(tmp_path / "mm.safetensors"), str(tmp_path / "r.safetensors"), rank=1, device="cpu")
    assert len(seen) > 3 and set(seen) == {("highest", False)}
    assert _flags() == ("high", True)
