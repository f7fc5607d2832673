"""Regression tests for the six findings of issue #8 (one test each, in the issue's order)."""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import types

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from merger.api import create_router
from merger.cli import main
from merger.errors import AlloyError
from merger.lora.synth import random_module
from merger.recipe import Recipe
from merger.session import Session, StandaloneHost
from merger.settings import Settings
from tests.fixtures import write_tiny
from tests.webui_standin.harness import api_world, diff_keys, snapshot

RECIPE = {"model_a": "A.safetensors", "model_b": "B.safetensors", "alpha": 0.3}


def standalone(tmp_path):
    """Models and LoRA folders with A, B and a LoRA; a folder beside them that must stay untouched,
    reachable through a link; a FIFO where an output could go."""
    t = types.SimpleNamespace(models=tmp_path / "models", loras=tmp_path / "loras", outside=tmp_path / "outside")
    for d in (t.models, t.loras, t.outside):
        d.mkdir()
    write_tiny(t.models / "A.safetensors", "sd1", seed=1)
    write_tiny(t.models / "B.safetensors", "sd1", seed=2)
    g = torch.Generator().manual_seed(3)
    save_file(random_module("lora_unet_down_blocks_0_attentions_0_proj_in", 12, 10, 4, 4.0, gen=g),
              str(t.loras / "l.safetensors"))
    (t.outside / "secret.safetensors").write_bytes(b"secret")
    for d in (t.models, t.loras):
        os.symlink(t.outside, d / "escape")
        os.mkfifo(d / "fifo.safetensors")
    t.session = Session(StandaloneHost(str(t.models), str(t.loras)), str(tmp_path / "data"), Settings())
    app = FastAPI()
    app.include_router(create_router(t.session))
    t.client = TestClient(app)
    return t


def tree(folder) -> dict:
    return {str(p.relative_to(folder)): (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def one_line(text: str) -> bool:
    return bool(text) and "\n" not in text.strip() and "Traceback" not in text


def test_finding1_api_writes_and_reads_only_inside_its_folders(tmp_path):
    t = standalone(tmp_path)
    outside, models, loras = tree(t.outside), tree(t.models), tree(t.loras)
    names = ["../outside/x", str(t.outside / "x"), "escape/x", "/dev/null", "fifo", "/etc/passwd",
             "sub/../../outside/x", "a\nb"]
    lora = {"overwrite": True, "device": "cpu"}
    for name in names:
        for route, body in [
            ("merge", {"recipe": RECIPE, "target": "file", "name": name, "overwrite": True}),
            ("lora/merge", {**lora, "loras": [{"path": "l.safetensors"}], "mode": "concat", "out": name}),
            ("lora/resize", {**lora, "lora": "l", "rank": 2, "out": name}),
            ("lora/extract", {**lora, "tuned": "B.safetensors", "base": "A.safetensors", "rank": 2, "out": name}),
            ("lora/bake", {**lora, "model": "A.safetensors", "loras": ["l.safetensors:1"], "out": name}),
        ]:
            r = t.client.post(f"/alloy/v1/{route}", json=body)
            assert r.status_code == 400 and one_line(r.json()["detail"]), (route, name, r.text)
    for route, body in [
        ("merge", {"recipe": dict(RECIPE, model_b=str(t.outside / "secret.safetensors")), "target": "file", "name": "o"}),
        ("merge", {"recipe": dict(RECIPE, model_b="../outside/secret.safetensors"), "target": "file", "name": "o"}),
        ("merge", {"recipe": dict(RECIPE, bake_vae="/etc/passwd"), "target": "file", "name": "o"}),
        ("lora/merge", {**lora, "loras": [str(t.outside / "secret.safetensors")], "mode": "concat", "out": "o"}),
        ("lora/merge", {**lora, "loras": ["escape/secret.safetensors:1"], "mode": "concat", "out": "o"}),
        ("lora/resize", {**lora, "lora": "fifo.safetensors", "rank": 2, "out": "o"}),
    ]:
        r = t.client.post(f"/alloy/v1/{route}", json=body)
        assert r.status_code == 400 and one_line(r.json()["detail"]), (route, body, r.text)
    assert tree(t.outside) == outside and tree(t.models) == models and tree(t.loras) == loras
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    # "overwrite": "false" is a string, not a boolean: refused, the existing file is kept
    body = {**lora, "loras": [{"path": "l.safetensors"}], "mode": "concat", "out": "m", "overwrite": False}
    assert t.client.post("/alloy/v1/lora/merge", json=body).status_code == 200
    before = (t.loras / "m.safetensors").stat().st_mtime_ns
    for value in ("false", "true", 1, None, [True]):
        r = t.client.post("/alloy/v1/lora/merge", json={**body, "overwrite": value})
        assert r.status_code == 400 and "'overwrite'" in r.json()["detail"], (value, r.text)
    r = t.client.post("/alloy/v1/merge", json={"recipe": RECIPE, "target": "file", "name": "f", "overwrite": "false"})
    assert r.status_code == 400 and "true or false" in r.json()["detail"]
    assert (t.loras / "m.safetensors").stat().st_mtime_ns == before and not (t.models / "f.safetensors").exists()
    # /save over the WebUI host: names only
    (tmp_path / "webui").mkdir()
    w, s, c = api_world(tmp_path / "webui")
    assert c.post("/alloy/v1/merge", json={"recipe": RECIPE}).status_code == 200
    for name in ("../x", str(tmp_path / "x"), "/dev/null"):
        r = c.post("/alloy/v1/save", json={"name": name, "overwrite": True})
        assert r.status_code == 400, r.text
    assert not (tmp_path / "webui" / "x.safetensors").exists() and not (tmp_path / "x.safetensors").exists()


def test_finding2_no_500_for_the_reported_bodies_and_recipe_files(tmp_path, capsys):
    t = standalone(tmp_path)
    lora = {"device": "cpu", "out": "o"}
    cases = [
        ("merge", {"recipe": dict(RECIPE, seed=1e999)}, "seed"),
        ("merge", {"recipe": dict(RECIPE, alpha=None)}, "alpha"),
        ("merge", {"recipe": dict(RECIPE, model_a=["A.safetensors"])}, "model_a"),
        ("merge", {"recipe": dict(RECIPE, hashes="abc")}, "hashes"),
        ("merge", {"recipe": dict(RECIPE, alpha_blocks=5)}, "alpha_blocks"),
        ("merge", {"recipe": dict(RECIPE, alpha=float("nan"))}, "alpha"),
        ("merge", {"recipe": dict(RECIPE, seed=10 ** 40)}, "seed"),
        ("merge", None, "JSON object"),
        ("merge", [RECIPE], "JSON object"),
        ("lora/merge", {**lora, "loras": [{"path": "l.safetensors", "ratio": None}], "mode": "concat"}, "ratio"),
        ("lora/merge", {**lora, "loras": [{"path": "l.safetensors"}], "rank": 1e999}, "rank"),
        ("lora/merge", {**lora, "loras": "l.safetensors", "rank": 2}, "loras"),
        ("lora/extract", {**lora, "tuned": "B.safetensors", "base": "A.safetensors", "rank": 1e999}, "rank"),
        ("lora/extract", {**lora, "tuned": ["B"], "base": "A.safetensors", "rank": 2}, "tuned"),
        ("lora/resize", {**lora, "lora": "l", "rank": "big"}, "rank"),
        ("lora/resize", {**lora, "lora": "l", "dynamic": "sv_fro", "param": float("inf")}, "param"),
        ("lora/bake", {**lora, "model": "A.safetensors", "loras": [{"path": "l.safetensors", "blocks": 5}]}, "blocks"),
        ("lora/bake", {**lora, "model": "A.safetensors", "loras": ["l.safetensors:1e999"]}, "ratio"),
    ]
    for route, body, field in cases:
        r = t.client.post(f"/alloy/v1/{route}", json=body)
        assert r.status_code == 400, (route, body, r.text)
        assert one_line(r.json()["detail"]) and field in r.json()["detail"], (route, r.text)
    out = tmp_path / "o.safetensors"
    texts = ['{"model_a": ["x"], "model_b": "b"}', '{"model_a": "a", "model_b": "b", "alpha": "x"}', "[]", "{",
             "[" * 100000 + "]" * 100000, '{"model_a": "a", "model_b": "b", "seed": 1e999}', "\xff\xfe{",
             '{"model_a": "a", "model_b": "b", "hashes": {"a": 5}}', '{"model_a": "a", "model_b": {"x": 1}}',
             '{"model_a": "a", "model_b": "b", "prune": "false"}', '{"model_a": "a", "type": "other"}']
    for i, text in enumerate(texts):
        f = tmp_path / f"r{i}.json"
        f.write_bytes(text.encode("utf-8", "surrogateescape") if i != 6 else b"\xff\xfe{")
        assert main(["run", str(f), "--out", str(out), "--quiet"]) == 2, text[:40]
        err = capsys.readouterr().err
        assert err.startswith("error: ") and one_line(err), err
    assert not out.exists()


def _legacy_ckpt() -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": {"a": torch.randn(3, 3), "b": torch.arange(4)}}, buf,
               _use_new_zipfile_serialization=False)
    return buf.getvalue()


def test_finding3_cli_readers_refuse_malformed_files_with_one_line(tmp_path, capsys):
    def header_file(name, header: bytes, data=b"\0" * 16):
        p = tmp_path / name
        p.write_bytes(struct.pack("<Q", len(header)) + header + data)
        return p
    files = [
        header_file("dtype_list.safetensors", b'{"k": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}'),
        header_file("dtype_dict.safetensors", b'{"k": {"dtype": {"a": 1}, "shape": [1], "data_offsets": [0, 4]}}'),
        header_file("deep.safetensors", b'{"__metadata__": {"x": ' + b"[" * 100000 + b"]" * 100000 + b"}}"),
        header_file("deep2.safetensors", b'{"__metadata__": {"x": ' + b"[" * 200 + b"]" * 200 + b"}}"),
        header_file("shape.safetensors", b'{"k": {"dtype": "F32", "shape": [1e30], "data_offsets": [0, 4]}}'),
        header_file("offs.safetensors", b'{"k": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e999]}}'),
    ]
    data = _legacy_ckpt()
    for cut in range(0, len(data), 23):
        (tmp_path / f"cut{cut}.ckpt").write_bytes(data[:cut])
        files.append(tmp_path / f"cut{cut}.ckpt")
    for i in range(0, len(data), 5):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        (tmp_path / f"flip{i}.ckpt").write_bytes(bytes(flipped))
        files.append(tmp_path / f"flip{i}.ckpt")
    for name in ("mem.safetensors", "mem.ckpt"):
        os.symlink("/proc/self/mem", tmp_path / name)
        files.append(tmp_path / name)
    nl = tmp_path / "new\nline.safetensors"
    nl.write_bytes(b"garbage")
    files += [nl, tmp_path / "missing\nfile.safetensors"]
    a = write_tiny(tmp_path / "A.safetensors", "sd1", seed=1)
    out = tmp_path / "o.safetensors"
    for f in files:
        for argv in (["inspect", str(f)], ["merge", "--model-a", str(a), "--model-b", str(f), "--out", str(out), "--quiet"]):
            code = main(argv)
            err = capsys.readouterr().err
            assert code in (0, 2) and (code == 0 or (err.startswith("error: ") and one_line(err))), (f, err)
            if "\n" in f.name and code == 2:
                assert repr(str(f))[1:-1] in err                   # the name is shown escaped
    assert not out.exists()


def test_finding4_engine_errors_name_file_and_key(tmp_path, capsys):
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"

    def poison(sd):
        sd[key] = torch.full_like(sd[key], float("inf"))

    def reshape(sd):
        sd[key] = torch.zeros(1, 2, 3, dtype=sd[key].dtype)
    a = write_tiny(tmp_path / "A.safetensors", "sd1", seed=1)
    cases = {
        "inf.safetensors": (dict(edit=poison), [key, "A.safetensors", "inf.safetensors", "NaN or infinite"]),
        "shape.safetensors": (dict(edit=reshape), [key, "A.safetensors", "shape.safetensors", "Shape mismatch"]),
    }
    for name, (kw, needles) in cases.items():
        write_tiny(tmp_path / name, "sd1", seed=2, **kw)
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "odd.safetensors"))
    save_file({"model.diffusion_model.joint_blocks.0.x.weight": torch.zeros(2)}, str(tmp_path / "sd3.safetensors"))
    cases["odd.safetensors"] = (None, ["odd.safetensors", "unrecognised layout"])
    cases["sd3.safetensors"] = (None, ["sd3.safetensors", "Stable Diffusion 3"])
    for name, (_, needles) in cases.items():
        code = main(["merge", "--model-a", str(a), "--model-b", str(tmp_path / name), "--out",
                     str(tmp_path / "o.safetensors"), "--quiet", "--dtype", "fp32"])
        err = capsys.readouterr().err
        assert code == 2 and one_line(err), err
        for needle in needles:
            assert needle in err, (needle, err)


def test_finding5_bad_recipe_with_another_model_a_loads_nothing(tmp_path):
    w, s, c = api_world(tmp_path)
    write_tiny(w.models / "XL.safetensors", "sdxl", seed=4)
    w.sd_models.list_models()
    loads, before = w.sd_models.load_count["n"], snapshot(w.model)
    bad = [
        {"model_a": "C.safetensors", "model_b": "XL.safetensors"},                   # other architecture
        {"model_a": "C.safetensors", "model_b": "B.safetensors", "alpha_blocks": "1,2,3"},
        {"model_a": "C.safetensors", "model_b": "missing.safetensors"},
        {"model_a": "C.safetensors", "model_b": "B.safetensors", "mode": "Add difference", "calc": "cosineA",
         "model_c": "A.safetensors"},
        {"model_a": "C.safetensors", "model_b": "B.safetensors", "adjust": "1,2"},
        {"model_a": "C.safetensors", "model_b": "B.safetensors", "elemental": "NOPE:attn:0.5"},
    ]
    for recipe in bad:
        with pytest.raises(AlloyError):
            s.merge_live(Recipe.from_dict(recipe))
        r = c.post("/alloy/v1/merge", json={"recipe": recipe})
        assert r.status_code == 400, r.text
    assert w.sd_models.load_count["n"] == loads
    assert w.model.sd_model_checkpoint == w.paths["a"] and not diff_keys(before, snapshot(w.model))


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux sysfs (a folder no one may write)")
def test_finding6_side_writes_never_undo_or_fail_a_merge(tmp_path, capsys):
    a, b = (write_tiny(tmp_path / f"{n}.safetensors", "sd1", seed=i) for i, n in ((1, "a"), (2, "b")))
    out = tmp_path / "o.safetensors"
    code = main(["merge", "--model-a", str(a), "--model-b", str(b), "--out", str(out), "--quiet",
                 "--recipe-out", "/sys/kernel/alloy-recipe.json"])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and "alloy-recipe.json" in err, err
    assert not out.exists() and not os.path.exists("/sys/kernel/alloy-recipe.json")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.safetensors")]     # no temp file left
    # history on a full disk (/dev/full): the merge and the restore happen and say so in a warning
    (tmp_path / "webui").mkdir()
    w, s, c = api_world(tmp_path / "webui")
    (tmp_path / "webui" / "data").mkdir()
    os.symlink("/dev/full", tmp_path / "webui" / "data" / "history.jsonl")
    orig = snapshot(w.model)
    r = c.post("/alloy/v1/merge", json={"recipe": RECIPE})
    assert r.status_code == 200 and any("history" in x for x in r.json()["warnings"]), r.text
    assert s.live.recipe is not None and diff_keys(orig, snapshot(w.model))
    r = c.post("/alloy/v1/merge", json={"recipe": RECIPE, "target": "file", "name": "f"})
    assert r.status_code == 200 and (w.models / "f.safetensors").exists() and r.json()["warnings"], r.text
    r = c.post("/alloy/v1/restore")
    assert r.status_code == 200 and "Warning" in r.json()["message"], r.text
    assert not diff_keys(orig, snapshot(w.model))
    rep = s.merge_live(Recipe.from_dict(RECIPE))
    assert rep.warnings and "history" in s.last_message and json.loads(json.dumps(s.status()))["merged"]
    assert s.history.entries() == [] and s.xyz_base().alpha == 0.3          # reading it never hangs
