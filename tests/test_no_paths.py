"""Issue #14: files and images Alloy writes carry no local paths (models by file name and sha256),
and recipes still find their models (by hash, then name) and reproduce merges byte for byte."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors import safe_open
from safetensors.torch import save_file

from merger.cli import main
from merger.io import sha256_file
from merger.lora.synth import random_module
from merger.recipe import Recipe
from tests.fixtures import write_tiny

MARK = "Xq7-private-folder"       # the user's folder name that must not leave the machine


def metadata(path) -> str:
    with safe_open(str(path), "pt") as f:
        return json.dumps(f.metadata() or {})


def assert_private(text: str, where) -> None:
    assert MARK not in text and "/tmp" not in text and "pytest-" not in text, (where, text[:2000])


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / MARK
    d.mkdir()
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_tiny(d / f"{name}.safetensors", "sd1", seed=seed)
    for name, seed in (("big", 4), ("small", 5)):
        g = torch.Generator().manual_seed(seed)
        save_file(random_module("lora_unet_down_blocks_0_attentions_0_proj_in", 12, 10, 4, 4.0, gen=g),
                  str(d / f"{name}.safetensors"))
    return d


def test_cli_outputs_name_models_by_file_and_hash_and_run_finds_them_elsewhere(folder, tmp_path, capsys):
    out, recipe = folder / "m.safetensors", folder / "m.json"
    assert main(["merge", "--model-a", str(folder / "a.safetensors"), "--model-b", str(folder / "b.safetensors"),
                 "--model-c", str(folder / "c.safetensors"), "--mode", "Add difference", "--alpha", "0.7",
                 "--bake-vae", str(folder / "b.safetensors"), "--out", str(out), "--recipe-out", str(recipe),
                 "--quiet"]) == 0
    assert_private(metadata(out), out)
    assert_private(recipe.read_text(), recipe)
    r = json.loads(recipe.read_text())
    assert (r["model_a"], r["model_c"], r["bake_vae"]) == ("a.safetensors", "c.safetensors", "b.safetensors")
    assert r["hashes"]["a"] == sha256_file(folder / "a.safetensors") and set(r["hashes"]) == {"a", "b", "c", "vae"}
    embedded = json.loads(json.loads(metadata(out))["alloy_recipe"])
    assert embedded == r
    # the models found by sha256 in another folder under other names: the same file, byte for byte
    other = tmp_path / "elsewhere"
    other.mkdir()
    for slot, name in (("a", "one"), ("b", "two"), ("c", "three")):
        shutil.copy(folder / f"{slot}.safetensors", other / f"{name}.safetensors")
    shutil.copy(recipe, other / "m.json")
    for args in (["--models-dir", str(other)], []):          # default: the recipe's own folder
        again = tmp_path / "again.safetensors"
        assert main(["run", str(other / "m.json"), *args, "--out", str(again), "--quiet", "--overwrite"]) == 0
        assert again.read_bytes() == out.read_bytes()
    capsys.readouterr()
    (other / "two.safetensors").unlink()
    assert main(["run", str(other / "m.json"), "--out", str(tmp_path / "x.safetensors"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model B of the recipe (b.safetensors, sha256" in err and str(other) in err, err
    # a recipe with local paths only on request
    local = tmp_path / "local.json"
    assert main(["merge", "--model-a", str(folder / "a.safetensors"), "--model-b", str(folder / "b.safetensors"),
                 "--out", str(tmp_path / "l.safetensors"), "--recipe-out", str(local), "--recipe-paths",
                 "--quiet"]) == 0
    assert json.loads(local.read_text())["model_a"] == str(folder / "a.safetensors")
    assert_private(metadata(tmp_path / "l.safetensors"), "l.safetensors")


def test_lora_outputs_carry_no_path(folder, capsys):
    d = str(folder)
    runs = [
        ["lora", "merge", "--lora", f"{d}/big.safetensors:1.5", "--lora", f"{d}/small.safetensors:-1.5",
         "--rank", "2", "--out", f"{d}/merged.safetensors", "--device", "cpu"],
        ["lora", "merge", "--lora", f"{d}/big.safetensors:1", "--concat", "--out", f"{d}/cat.safetensors",
         "--device", "cpu"],
        ["lora", "resize", "--lora", f"{d}/big.safetensors", "--dynamic", "sv_fro", "--param", "0.75",
         "--out", f"{d}/resized.safetensors", "--device", "cpu"],
        ["lora", "extract", "--tuned", f"{d}/b.safetensors", "--base", f"{d}/a.safetensors", "--rank", "2",
         "--out", f"{d}/extracted.safetensors", "--device", "cpu"],
        ["lora", "bake", "--model", f"{d}/a.safetensors", "--lora", f"{d}/extracted.safetensors:0.5",
         "--out", f"{d}/baked.safetensors", "--device", "cpu"],
    ]
    for argv in runs:
        assert main(argv) == 0, capsys.readouterr().err
        out = argv[argv.index("--out") + 1]
        assert_private(metadata(out), out)
    from merger.api import create_router
    from merger.session import Session, StandaloneHost
    app = FastAPI()
    app.include_router(create_router(Session(StandaloneHost(d), str(folder / ".alloy"))))
    c = TestClient(app)
    r = c.post("/alloy/v1/lora/resize", json={"lora": "big", "rank": 2, "out": "api-resized", "device": "cpu"})
    assert r.status_code == 200, r.text
    assert_private(metadata(folder / "api-resized.safetensors"), "api-resized")


def test_api_and_live_merge_infotext_carry_no_path(tmp_path):
    from merger.webui import INFOTEXT_RECIPE
    from tests.webui_standin.harness import api_world
    root = tmp_path / MARK
    root.mkdir()
    w, s, c = api_world(root)
    from modules import processing, scripts
    w.scripts.scripts_data.append(w.scripts.ScriptClassData(_script_class(s), "alloy.py", str(root), None))
    r = c.post("/alloy/v1/merge", json={"recipe": {"model_a": "A.safetensors", "model_b": "B.safetensors",
                                                   "alpha": 0.4}})
    assert r.status_code == 200, r.text
    p = processing.StableDiffusionProcessing(scripts_runner=scripts.ScriptRunner())
    text = processing.process_images(p).infotexts[0]
    assert_private(text, "infotext")
    shared = Recipe.from_dict(json.loads(p.extra_generation_params[INFOTEXT_RECIPE]))
    assert (shared.model_a, shared.model_b) == ("A.safetensors", "B.safetensors")
    assert shared.hashes == {"a": sha256_file(w.paths["a"])[:10], "b": sha256_file(w.paths["b"])[:10]}
    assert shared.short_hash() == s.live.recipe.short_hash()
    for body in ({"name": "saved"}, ):
        assert c.post("/alloy/v1/save", json=body).status_code == 200
    assert c.post("/alloy/v1/merge", json={"recipe": r.json()["recipe"], "target": "file", "name": "f"}).status_code == 200
    for name in ("saved", "f"):
        assert_private(metadata(w.models / f"{name}.safetensors"), name)


def test_loaded_recipes_find_models_by_hash_then_name(tmp_path):
    from merger.ui.context import TabContext
    from merger.ui.recipe_panel import apply_recipe
    from tests.webui_standin.harness import api_world, diff_keys, snapshot
    w, s, c = api_world(tmp_path)
    shutil.copy(w.paths["b"], w.models / "renamed.safetensors")
    w.sd_models.list_models()
    hb = sha256_file(w.paths["b"])
    by_hash = {"model_a": "A.safetensors", "model_b": "old-name.safetensors", "alpha": 0.4, "hashes": {"b": hb[:10]}}
    # API: found by hash under another name
    r = c.post("/alloy/v1/merge", json={"recipe": by_hash})
    assert r.status_code == 200, r.text
    assert sha256_file(s.live.recipe.model_b) == hb
    merged = snapshot(w.model)
    # "load from PNG": the controls show the WebUI's title of the file with that hash
    out = apply_recipe(TabContext(s, live=True), Recipe.from_dict(by_hash), {"arch": "sd1", "blocks_target": "alpha"},
                       "the image")
    assert out["model_b"].split(" [")[0] in ("B.safetensors", "renamed.safetensors"), out["model_b"]
    missing = dict(by_hash, model_b="gone.safetensors", hashes={"b": "0123456789"})
    out = apply_recipe(TabContext(s, live=True), Recipe.from_dict(missing), {"arch": "sd1", "blocks_target": "alpha"},
                       "the image")
    assert "model B of the recipe (gone.safetensors, sha256 0123456789) was not found" in out["status"], out["status"]
    r = c.post("/alloy/v1/merge", json={"recipe": missing})
    assert r.status_code == 400 and "gone.safetensors" in r.json()["detail"]
    # by name when the hash is not there: used, with a warning
    r = c.post("/alloy/v1/merge", json={"recipe": dict(missing, model_b="B.safetensors")})
    assert r.status_code == 200 and "different sha256" in " ".join(r.json()["warnings"]), r.text
    # X/Y/Z recipe-file axis: a recipe file in the models folder, by name and hash
    (w.models / "r.json").write_text(Recipe.from_dict(by_hash).to_json())
    s.merge_live(s.load_recipe_file("r.json"))
    assert not diff_keys(merged, snapshot(w.model))
    for name in ("../r.json", str(tmp_path / "x.json"), "/etc/passwd"):
        with pytest.raises(Exception, match="recipe file"):
            s.load_recipe_file(name)


def _script_class(session):
    from merger.webui import make_script_class
    return make_script_class(session)
