"""SafetensorsWriter: atomic commit, overwrite rules, metadata rewrite, determinism, disk space."""
import collections
import os

import pytest
import safetensors
import safetensors.torch
import torch

from merger.errors import AlloyError
from merger.io import SafetensorsWriter, open_source, save_state_dict
from merger.io import writer as writer_mod


def tensors(v=1.0):
    return {"b": torch.full((4, 3), v), "a": torch.arange(6, dtype=torch.int64) * int(v),
            "s": torch.tensor(v).half(), "e": torch.empty(0), "h": torch.full((5,), v).bfloat16()}


def entries_of(t):
    return [(k, x.dtype, tuple(x.shape)) for k, x in t.items()]


def write_all(path, t, md=None, **kw):
    with SafetensorsWriter(path, entries_of(t), md, **kw) as w:
        for k, x in t.items():
            w.write(k, x)
        return w.commit()


def leftovers(folder):
    return [n for n in os.listdir(folder) if writer_mod.TEMP_TAG in n]


def test_write_and_load(tmp_path):
    t = tensors(2.0)
    p = write_all(tmp_path / "out.safetensors", t, {"format": "pt"})
    assert p == str(tmp_path / "out.safetensors")
    got = safetensors.torch.load_file(p)
    assert all(torch.equal(got[k], t[k]) for k in t)
    with safetensors.safe_open(p, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    raw = open(p, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0 and n >= 65536          # aligned data start, metadata reserve
    assert open_source(p).keys() == list(t)           # data in the given (not sorted) order
    assert leftovers(tmp_path) == []


def test_non_contiguous_input(tmp_path):
    x = torch.arange(12.0).reshape(3, 4).t()
    p = save_state_dict(tmp_path / "nc.safetensors", {"x": x})
    assert torch.equal(safetensors.torch.load_file(p)["x"], x)


def test_set_metadata_after_tensors(tmp_path):
    t = tensors()
    w = SafetensorsWriter(tmp_path / "m.safetensors", entries_of(t), {"old": "1"})
    for k, x in t.items():
        w.write(k, x)
    w.set_metadata({"sd_merge_recipe": '{"type": "alloy"}', "format": "pt"})
    p = w.commit()
    with safetensors.safe_open(p, "pt") as f:
        assert f.metadata() == {"sd_merge_recipe": '{"type": "alloy"}', "format": "pt"}
    assert open_source(p).metadata["format"] == "pt"
    assert torch.equal(safetensors.torch.load_file(p)["b"], t["b"])


def test_metadata_too_large(tmp_path):
    t = tensors()
    with SafetensorsWriter(tmp_path / "m.safetensors", entries_of(t), metadata_reserve=64) as w:
        with pytest.raises(AlloyError, match="too large"):
            w.set_metadata({"x": "y" * 1000})
        w.set_metadata({"x": "ok"})
        for k, x in t.items():
            w.write(k, x)
        p = w.commit()
    with safetensors.safe_open(p, "pt") as f:
        assert f.metadata() == {"x": "ok"}


def test_deterministic(tmp_path):
    t = tensors(3.0)
    md = {"z": "1", "a": "2"}
    p1 = write_all(tmp_path / "one.safetensors", t, md)
    p2 = write_all(tmp_path / "two.safetensors", t, dict(reversed(list(md.items()))))
    assert open(p1, "rb").read() == open(p2, "rb").read()


def test_refuses_overwrite_without_flag(tmp_path):
    p = tmp_path / "exists.safetensors"
    p.write_bytes(b"old content")
    with pytest.raises(AlloyError, match="exists; pass --overwrite"):
        write_all(p, tensors())
    assert p.read_bytes() == b"old content" and leftovers(tmp_path) == []
    write_all(p, tensors(), overwrite=True)
    assert "b" in safetensors.torch.load_file(str(p))


def test_target_checks(tmp_path):
    with pytest.raises(AlloyError, match="does not exist"):
        SafetensorsWriter(tmp_path / "nope" / "x.safetensors", [])
    with pytest.raises(AlloyError, match="twice"):
        SafetensorsWriter(tmp_path / "x.safetensors", [("a", torch.float16, (1,))] * 2)
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(AlloyError, match="folder"):
        SafetensorsWriter(tmp_path / "d.safetensors", [], overwrite=True)


def test_free_space_check(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(writer_mod.shutil, "disk_usage", lambda p: usage(10 ** 9, 0, 1000))
    with pytest.raises(AlloyError, match="not enough free disk space") as ei:
        SafetensorsWriter(tmp_path / "big.safetensors", [("w", torch.float32, (1024, 1024))])
    assert "4.1 MiB" in str(ei.value)          # 4 MiB of data + the 64 KiB header
    assert os.listdir(tmp_path) == []


def test_order_dtype_shape_checks_and_abort(tmp_path):
    t = tensors()
    w = SafetensorsWriter(tmp_path / "o.safetensors", entries_of(t))
    with pytest.raises(ValueError, match="order"):
        w.write("a", t["a"])
    with pytest.raises(ValueError, match="header says"):
        w.write("b", t["b"].double())
    with pytest.raises(ValueError, match="header says"):
        w.write("b", t["b"].reshape(3, 4))
    w.write("b", t["b"])
    with pytest.raises(AlloyError, match="only 1 of 5"):
        w.commit()
    w.abort()
    assert os.listdir(tmp_path) == []


def test_exception_in_context_aborts(tmp_path):
    t = tensors()
    with pytest.raises(RuntimeError):
        with SafetensorsWriter(tmp_path / "x.safetensors", entries_of(t)) as w:
            w.write("b", t["b"])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_stale_temp_removed(tmp_path):
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = tmp_path / f".x.safetensors{writer_mod.TEMP_TAG}{dead}-abcd1234"
    stale.write_bytes(b"partial")
    other = tmp_path / f".y.safetensors{writer_mod.TEMP_TAG}{dead}-abcd1234"
    other.write_bytes(b"partial")
    write_all(tmp_path / "x.safetensors", tensors())
    assert not stale.exists() and other.exists()


def strict_check(path):
    """The structural rules safetensors 0.4.x enforces on load: __metadata__ is str->str, data
    offsets (sorted) are contiguous from 0, each span matches dtype x shape, and the data ends
    exactly at the end of the file."""
    import json

    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    md = header.pop("__metadata__", {})
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in md.items())
    size = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}
    pos = 0
    for key, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        begin, end = e["data_offsets"]
        assert begin == pos, key
        count = 1
        for d in e["shape"]:
            count *= d
        assert end - begin == count * size[e["dtype"]], key
        pos = end
    assert 8 + n + pos == len(raw)


def test_strict_format_rules(tmp_path):
    t = tensors(5.0)
    w = SafetensorsWriter(tmp_path / "s.safetensors", entries_of(t), {"a": "b"})
    for k, x in t.items():
        w.write(k, x)
    w.set_metadata({"c": "d" * 100})
    strict_check(w.commit())
    strict_check(save_state_dict(tmp_path / "p.safetensors", t))


def test_new_files_get_the_umask_mode_not_0600(tmp_path):
    """Saved files are readable as any new file would be (mkstemp alone gives 0600)."""
    from merger.atomic import atomic_write_text
    mask = os.umask(0)
    os.umask(mask)
    text = atomic_write_text(str(tmp_path / "r.json"), "{}")
    model = str(tmp_path / "m.safetensors")
    save_state_dict(model, {"w": torch.ones(2)})
    for path in (text, model):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
