"""merger.io sources: safetensors reading (round trip, reused buffers, corrupt files) and .ckpt."""
import json
import os
import struct

import pytest
import safetensors.torch
import torch

from merger.errors import AlloyError
from merger.io import (MemorySource, TensorInfo, open_source, parse_dtype_name, save_state_dict,
                       torch_dtype_name)


def sample_tensors():
    g = torch.Generator().manual_seed(0)
    t = {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(4, 2, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g).double(),
        "i64": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
        "i32": torch.tensor([1, -2, 3], dtype=torch.int32),
        "i16": torch.tensor([[-7, 8]], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 3], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 4),
    }
    if hasattr(torch, "float8_e4m3fn"):
        t["f8a"] = torch.randn(6, generator=g).to(torch.float8_e4m3fn)
        t["f8b"] = torch.randn(2, 3, generator=g).to(torch.float8_e5m2)
    return t


def same(a, b):
    """Bitwise equality (fp8 has no torch.equal on all builds: compare bytes)."""
    return a.dtype == b.dtype and a.shape == b.shape and bytes(
        a.contiguous().reshape(-1).view(torch.uint8).numpy()) == bytes(
        b.contiguous().reshape(-1).view(torch.uint8).numpy())


def raw_file(path, header: dict, data: bytes = b"", length=None):
    h = json.dumps(header).encode()
    n = len(h) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + h + data)
    return str(path)


def test_round_trip_all_dtypes(tmp_path):
    t = sample_tensors()
    p = save_state_dict(tmp_path / "m.safetensors", t, {"a": "1"})
    ref = safetensors.torch.load_file(p)
    assert set(ref) == set(t)
    with open_source(p, "model B") as src:
        assert src.label == "model B" and src.metadata == {"a": "1"}
        assert src.keys() == list(t)          # writer order == data-offset order
        for k, v in t.items():
            assert same(ref[k], v), k
            got = src.read(k)
            assert same(got, v), k
            assert src.info(k) == TensorInfo(k, v.dtype, tuple(v.shape), v.numel() * v.element_size())
        assert "f32" in src and "nope" not in src


def test_dtype_names():
    assert torch_dtype_name(torch.bfloat16) == "BF16" and parse_dtype_name("F16") is torch.float16
    with pytest.raises(AlloyError):
        parse_dtype_name("F4")
    with pytest.raises(AlloyError):
        torch_dtype_name(torch.complex64)


def test_read_into_reused_buffer(tmp_path):
    t = sample_tensors()
    p = save_state_dict(tmp_path / "m.safetensors", t)
    size = max(v.numel() * v.element_size() for v in t.values())
    buf = torch.empty(size + 16, dtype=torch.uint8)
    ba = bytearray(size)
    with open_source(p) as src:
        for k, v in t.items():
            for target in (buf, ba):
                out = src.read(k, target)
                assert same(out, v), k
                if v.numel():
                    base = buf.data_ptr() if target is buf else torch.frombuffer(ba, dtype=torch.uint8).data_ptr()
                    assert base <= out.data_ptr() < base + size  # a view, no new storage
        # a typed destination tensor works too (out= alias)
        dst = torch.empty(3, 5)
        assert src.read("f32", out=dst).data_ptr() == dst.data_ptr() and torch.equal(dst, t["f32"])
        with pytest.raises(ValueError):
            src.read("f32", bytearray(4))
        fresh = src.read("f32")
        assert fresh.untyped_storage().nbytes() == 60   # own memory, not a view of a file map


def test_closed_source_refuses(tmp_path):
    p = save_state_dict(tmp_path / "m.safetensors", {"x": torch.ones(2)})
    src = open_source(p)
    src.close()
    src.close()
    with pytest.raises(AlloyError, match="closed"):
        src.read("x")


@pytest.mark.parametrize("case, match", [
    ("bad_length", "header length"),
    ("bad_json", "invalid JSON"),
    ("overlap", "overlapping"),
    ("unknown_dtype", "unknown dtype"),
    ("truncated", "truncated"),
    ("wrong_size", "need"),
    ("tiny", "too small"),
])
def test_corrupt_files(tmp_path, case, match):
    p = tmp_path / "bad.safetensors"
    ok = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    if case == "bad_length":
        raw_file(p, ok, b"\0" * 8, length=10 ** 9)
    elif case == "bad_json":
        p.write_bytes(struct.pack("<Q", 6) + b"{nope}" + b"\0" * 8)
    elif case == "overlap":
        raw_file(p, {**ok, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    elif case == "unknown_dtype":
        raw_file(p, {"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    elif case == "truncated":
        raw_file(p, ok, b"\0" * 5)
    elif case == "wrong_size":
        raw_file(p, {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8)
    elif case == "tiny":
        p.write_bytes(b"abc")
    with pytest.raises(AlloyError, match=match) as ei:
        open_source(str(p), "model C")
    assert "model C" in str(ei.value) and str(p) in str(ei.value)
    if case in ("overlap", "unknown_dtype", "wrong_size"):
        assert "'a'" in str(ei.value) or "'b'" in str(ei.value)


def test_truncated_real_file(tmp_path):
    p = save_state_dict(tmp_path / "m.safetensors", {"x": torch.ones(100), "y": torch.ones(10)})
    data = open(p, "rb").read()
    open(p, "wb").write(data[:-3])
    with pytest.raises(AlloyError, match="truncated"):
        open_source(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(AlloyError, match="does not exist") as ei:
        open_source(str(tmp_path / "missing.safetensors"), "model B")
    assert "model B" in str(ei.value) and "missing.safetensors" in str(ei.value)
    d = tmp_path / "dir.safetensors"
    d.mkdir()
    with pytest.raises(AlloyError, match="not a file"):
        open_source(str(d))
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(AlloyError, match="unsupported extension"):
        open_source(str(tmp_path / "m.txt"))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw_pickle"])
def test_malicious_pickle_refused(tmp_path, fmt):
    import pickle

    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.ones(2), "x": _Evil(marker)}}
    if fmt == "zip":
        torch.save(payload, p)
    elif fmt == "legacy":
        torch.save(payload, p, _use_new_zipfile_serialization=False)
    else:
        p.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    with pytest.raises(AlloyError, match="refusing to load") as ei:
        open_source(str(p), "model B")
    assert "model B" in str(ei.value) and ".safetensors" in str(ei.value)
    assert not marker.exists()


def test_legit_ckpt_with_state_dict(tmp_path):
    t = {"model.w": torch.randn(3, 2), "model.b": torch.arange(4).half(), "ids": torch.arange(5)}
    p = tmp_path / "legit.ckpt"
    torch.save({"state_dict": {**t, "not_a_tensor": 3}, "epoch": 7, "global_step": 10}, p)
    src = open_source(str(p), "model A")
    assert isinstance(src, MemorySource) and src.keys() == list(t)
    for k, v in t.items():
        got = src.read(k)
        assert same(got, v)
        got.zero_()                                     # callers cannot corrupt the source
        assert same(src.read(k), v)
    buf = torch.empty(64, dtype=torch.uint8)
    out = src.read("model.w", buf)
    assert out.data_ptr() == buf.data_ptr() and torch.equal(out, t["model.w"])
    flat = tmp_path / "flat.pt"
    torch.save(t, flat)
    assert open_source(str(flat)).keys() == list(t)


def test_corrupt_ckpt(tmp_path):
    p = tmp_path / "junk.ckpt"
    p.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(AlloyError, match="junk.ckpt"):
        open_source(str(p))


def test_reads_files_from_the_safetensors_library(tmp_path, monkeypatch):
    t = sample_tensors()
    p = str(tmp_path / "lib.safetensors")
    safetensors.torch.save_file(t, p, metadata={"format": "pt"})
    with open_source(p) as src:
        assert set(src.keys()) == set(t) and src.metadata == {"format": "pt"}
        with open(p, "rb") as f:       # keys() follows data offsets (sequential reads)
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        offsets = [header[k]["data_offsets"][0] for k in src.keys()]
        assert offsets == sorted(offsets)
        assert all(same(src.read(k), t[k]) for k in t)
    # the portable fallback (no os.preadv, e.g. Windows) reads the same bytes
    import merger.io.source as source_mod
    monkeypatch.setattr(source_mod, "_HAVE_PREADV", False)
    with open_source(p) as src:
        assert all(same(src.read(k), t[k]) for k in t)
