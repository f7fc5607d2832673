"""scripts/alloy.py in the Forge stand-in: Forge's host is chosen, model A is loaded the Forge way,
a model change drops every reference, X/Y/Z merges once per alpha and restores, infotext, REST API."""
import gc
import importlib.util
import weakref
from pathlib import Path

import pytest

from tests.forge_standin.harness import generate, load_checkpoint, make_world
from tests.webui_standin.harness import diff_keys

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLOY_DATA_DIR", str(tmp_path / "data"))


def _register(w):
    spec = importlib.util.spec_from_file_location("alloy.py", ROOT / "scripts" / "alloy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = module.AlloyScript
    w.scripts.scripts_data.append(w.scripts.ScriptClassData(cls, "alloy.py", str(ROOT), None))
    w.callbacks.before_ui_callback()
    return cls, cls.alloy_session


def _recipe(w, **kw):
    from merger.recipe import Recipe
    return Recipe(model_a="A.safetensors", model_b="B.safetensors", **kw)


def test_scripts_pick_forges_host_and_load_model_a_the_forge_way(forge, tmp_path):
    from merger.forge import ForgeHost, detected
    w = make_world(tmp_path, warmup=False)
    assert detected()
    assert type(w.shared.sd_model).__name__ == "FakeInitialModel"     # nothing loaded until a generation
    cls, session = _register(w)
    assert isinstance(session.host, ForgeHost)
    assert session.host.loaded_model_path() is None and session.host.live_model() is None
    rep = session.merge_live(_recipe(w, alpha=0.3))
    engine = w.shared.sd_model
    assert engine.filename == w.paths["a"] and w.sd_models.load_count["n"] == 1 and rep.keys_merged > 250
    info_a = next(i for i in w.sd_models.checkpoints_list.values() if i.filename == w.paths["a"])
    assert w.shared.opts.sd_model_checkpoint == info_a.title
    out = generate(scripts_runner=w.scripts.ScriptRunner())
    assert w.sd_models.load_count["n"] == 1                           # generating keeps the merge
    text = out.infotexts[0]
    assert f"Model hash: {session.live.recipe.short_hash()}" in text and "Alloy recipe" in text
    session.restore()
    assert "Alloy" not in engine.sd_checkpoint_info.title


def test_another_checkpoint_ends_the_merge_and_nothing_keeps_the_old_engine(forge, tmp_path):
    w = make_world(tmp_path)
    cls, session = _register(w)
    session.merge_live(_recipe(w, alpha=0.5))
    assert session.cache.stats().bytes > 0
    old = weakref.ref(w.shared.sd_model)
    load_checkpoint(w.paths["b"])
    assert w.sd_models.freed_before_load["last"] is True       # Forge could free A before loading B
    assert session.live is None and session.status()["merged"] is False
    assert session.cache.stats().bytes == 0
    gc.collect()
    assert old() is None
    session.merge_live(_recipe(w, alpha=0.5))                          # loads A again, then merges
    assert w.shared.sd_model.filename == w.paths["a"]


def test_xyz_three_alphas_two_seeds_merge_three_times_and_restore(forge, tmp_path):
    w = make_world(tmp_path)
    cls, session = _register(w)
    session.set_draft(_recipe(w, alpha=0.5).replace(model_a=w.paths["a"], model_b=w.paths["b"]))
    original = generate().images[0]
    grid = w.xyz.Script()
    grid.ui(False)
    labels = [o.label for o in grid.current_axis_options]
    p = w.processing.StableDiffusionProcessing(seed=1, scripts_runner=w.scripts.ScriptRunner())
    results = grid.run(p, labels.index("[Alloy] Alpha"), "0.2,0.5,0.8", labels.index("Seed"), "1,2")
    assert len(results) == 6
    assert sum(1 for e in session.history.entries() if e["kind"] == "live") == 3
    images = [r.images[0] for _, r in results]
    assert not diff_keys(images[0], images[1]) and diff_keys(images[0], images[2])
    assert len({r.infotexts[0].split("Alloy hash: ")[1][:10] for _, r in results}) == 3
    assert not diff_keys(original, generate().images[0])             # restored after the grid


def test_rest_api_merges_and_restores(forge, tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    w = make_world(tmp_path)
    cls, session = _register(w)
    app = FastAPI()
    w.callbacks.app_started_callback(None, app)
    c = TestClient(app)
    original = generate().images[0]
    r = c.post("/alloy/v1/merge", json={"recipe": {"model_a": "A.safetensors", "model_b": "B.safetensors",
                                                   "alpha": 0.4}})
    assert r.status_code == 200, r.text
    assert c.get("/alloy/v1/status").json()["loaded"] == w.paths["a"]
    assert diff_keys(original, generate().images[0])
    assert c.post("/alloy/v1/restore").status_code == 200
    assert not diff_keys(original, generate().images[0])


def test_cache_budget_is_capped_to_the_ram_free_beside_forge(forge, tmp_path, monkeypatch):
    import sys
    import types
    w = make_world(tmp_path)
    cls, session = _register(w)
    w.shared.opts.data["alloy_cache_gb"] = 4
    for free_gib, budget_gib in ((100, 4), (5, 2), (2, 0)):
        vm = types.SimpleNamespace(available=free_gib << 30)
        monkeypatch.setitem(sys.modules, "psutil", types.SimpleNamespace(virtual_memory=lambda vm=vm: vm))
        session.restore()                                # every action re-reads the settings
        assert session.cache.stats().budget == budget_gib << 30
