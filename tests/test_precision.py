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
    """The settings as the program sees them: per backend where torch has that (≥ 2.9), else the
    process-wide pair; inside full_float32() every one is IEEE float32."""
    from merger.precision import _backends
    per_backend = _backends()
    if per_backend:
        values = tuple(x.fp32_precision for x in per_backend)
        return "strict" if set(values) == {"ieee"} else values
    legacy = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    return "strict" if legacy == ("highest", False) else legacy


def test_a_program_on_the_per_backend_settings_keeps_working():
    """torch ≥ 2.9: a program that set `fp32_precision` per backend (reading the process-wide
    setting then raises) still merges, and gets its settings back."""
    m = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if m is None:
        pytest.skip("torch < 2.9 has no per-backend settings")
    conv = torch.backends.cudnn.conv
    before = m, conv.fp32_precision
    torch.backends.cuda.matmul.fp32_precision, conv.fp32_precision = "tf32", "tf32"
    try:
        with full_float32():
            assert (torch.backends.cuda.matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
            assert torch.backends.mkldnn.matmul.fp32_precision == "ieee" and _flags() == "strict"
        assert (torch.backends.cuda.matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    finally:
        torch.backends.cuda.matmul.fp32_precision, conv.fp32_precision = before


def test_the_older_settings_are_used_where_torch_has_no_per_backend_ones(monkeypatch, tf32_on):
    from merger import precision
    monkeypatch.setattr(precision, "_backends", lambda: [])
    with full_float32():
        assert _flags() == "strict"
    assert _flags() == ("high", True)


def test_the_block_is_full_float32_and_the_settings_come_back(tf32_on):
    program = _flags()
    assert program != "strict"
    with full_float32():
        assert _flags() == "strict"
        with full_float32():
            assert _flags() == "strict"
        assert _flags() == "strict"
    assert _flags() == program
    with pytest.raises(ValueError), full_float32():
        raise ValueError("a merge failed")
    assert _flags() == program
    assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"   # A1111's, readable


def test_overlapping_merges_on_threads_restore_only_when_the_last_ends(tf32_on):
    program = _flags()
    entered, release = threading.Event(), threading.Event()

    def other():
        with full_float32():
            entered.set()
            release.wait(10)
    t = threading.Thread(target=other)
    with full_float32():
        t.start()
        entered.wait(10)
    assert _flags() == "strict"                    # the other merge still runs
    release.set()
    t.join(10)
    assert _flags() == program


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
    assert seen and set(seen) == {"strict"}
    assert _flags() != "strict"


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
    assert len(seen) > 3 and set(seen) == {"strict"}
    assert _flags() != "strict"


def test_settings_that_cannot_be_changed_do_not_stop_a_merge(monkeypatch):
    """A torch whose settings refuse the change: the block still runs, and what was changed before
    the refusal is put back at once."""
    from merger import precision

    class Setting:
        def __init__(self, value, refuse):
            self._v, self.refuse = value, refuse

        @property
        def fp32_precision(self):
            return self._v

        @fp32_precision.setter
        def fp32_precision(self, v):
            if self.refuse and v == "ieee":
                raise RuntimeError("not supported here")
            self._v = v
    first, second = Setting("tf32", False), Setting("tf32", True)
    monkeypatch.setattr(precision, "_backends", lambda: [first, second])
    ran = []
    with full_float32():
        ran.append((first.fp32_precision, second.fp32_precision))
    assert ran == [("tf32", "tf32")] and first.fp32_precision == "tf32"
