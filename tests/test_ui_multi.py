"""The tab with the multi-model modes: models D–F and the new parameters shown when the mode takes
them, recipes in and out of the controls, a six-model merge to file from the tab."""
from __future__ import annotations

import json

import pytest

gr = pytest.importorskip("gradio")

from tests.ui_fixtures import write_tiny_sd1  # noqa: E402

from merger.multimodes import MULTI_MODES  # noqa: E402
from merger.recipe import Recipe  # noqa: E402
from merger.ui import build  # noqa: E402
from merger.ui import fields as fl  # noqa: E402
from merger.ui import merge_panel as mp  # noqa: E402
from merger.ui import recipe_panel as rp  # noqa: E402
from merger.ui.context import TabContext  # noqa: E402
from merger.ui.method_view import method_view  # noqa: E402
from merger.ui.standalone import make_session  # noqa: E402
from merger.ui.wiring import run_guarded  # noqa: E402

NAMES = [f"{s}.safetensors" for s in "abcdef"]


@pytest.fixture
def ctx(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for i, name in enumerate(NAMES):
        write_tiny_sd1(models / name, i + 1)
    return TabContext(make_session(str(models), str(tmp_path / "data")), live=False)


def _fields(**over):
    f = dict(fl.RECIPE_DEFAULTS)
    f.update({f"model_{s}": n for s, n in zip("abcdef", NAMES)}, out_name="out", overwrite=False)
    f.update(over)
    return f


def _visible(view, name):
    return view[name]["visible"]


@pytest.mark.parametrize("mode", list(MULTI_MODES))
def test_view_shows_what_each_mode_takes(mode):
    spec = MULTI_MODES[mode]
    view = method_view(spec.label, "cosineA")                      # an invalid calc falls back to normal
    assert view["calc"]["choices"] == ["normal"] and view["calc"]["value"] == "normal"
    assert _visible(view, "model_c") is (mode != "slerp")
    assert all(_visible(view, f"model_{s}") is (mode != "slerp") for s in "def")
    for name in ("weights", "density", "outliers"):
        assert _visible(view, name) is (name in spec.uses), name
    assert "seed" not in view                                     # the Random weights' seed stays visible
    assert ("Seed under Random weights" in view["method_info"]) is ("seed" in spec.uses)
    assert not _visible(view, "beta") and not _visible(view, "gamma")
    assert ("λ" if mode != "slerp" else "t,") in view["method_info"] or "alpha = t" in view["method_info"]


def test_classic_modes_hide_the_new_controls():
    for label in ("Weight sum", "Add difference"):
        view = method_view(label, "normal")
        assert not any(_visible(view, n) for n in ("model_d", "model_e", "model_f", "weights", "density",
                                                   "outliers"))
    assert _visible(method_view("Add difference", "normal"), "model_c")


def test_fields_to_recipe_and_back():
    f = _fields(mode="DARE TIES", weights="1, 0.5, 2, 1, 1", density=0.3, seed=5, alpha=0.8)
    r = fl.recipe_from_fields(f)
    assert (r.mode, r.model_f, r.weights, r.density, r.seed) == ("dare_ties", "f.safetensors",
                                                                 [1, 0.5, 2, 1, 1], 0.3, 5)
    back = fl.fields_from_recipe(Recipe.from_json(r.to_json()), NAMES)
    for name in fl.RECIPE_FIELDS:
        want = "1,0.5,2,1,1" if name == "weights" else f[name]
        assert back[name] == want, name
    # hidden pickers and parameters do not reach the recipe
    s = fl.recipe_from_fields(_fields(mode="SLERP", weights="junk"))
    assert (s.model_c, s.model_d, s.model_f, s.weights) == (None, None, None, None)
    t = fl.recipe_from_fields(_fields(mode="Weight sum", weights="junk", density=0.2))
    assert t.model_d is None and t.weights is None and t.density == fl.RECIPE_DEFAULTS["density"]
    stock = fl.recipe_from_fields(_fields(mode="Model stock", weights="junk"))
    assert stock.weights is None and stock.model_f == "f.safetensors"


def test_build_has_the_new_controls(ctx):
    _, ui = build(ctx.session, live=True)
    for name in ("model_d", "model_e", "model_f", "weights", "density", "outliers"):
        assert name in ui and ui[name].visible is False, name
    assert "seed" in ui
    labels = [c[0] if isinstance(c, (tuple, list)) else c for c in ui["mode"].choices]
    assert "TIES" in labels and "Geometric median" in labels and "SLERP" in labels


def test_six_model_merge_from_the_tab_and_load_it_back(ctx, tmp_path):
    f = _fields(mode="TIES", weights="1,1,2,1,0.5", density=0.4, alpha=1.0)
    out = run_guarded(lambda x: mp.on_merge_to_file(ctx, x), f)
    assert "keys merged" in out["status"], out
    recipe = json.loads(out["recipe_json"])
    assert recipe["mode"] == "ties" and recipe["model_f"].endswith("f.safetensors")
    assert set(recipe["hashes"]) == set("abcdef")
    loaded = rp.on_load_checkpoint(ctx, {"arch": "sd1", "blocks_target": "alpha", "meta_model": "out.safetensors"})
    assert loaded["mode"] == "TIES" and loaded["density"]["value"] == 0.4
    assert loaded["model_f"]["value"] == "f.safetensors" and loaded["model_f"]["visible"] is True
    assert loaded["weights"]["value"] == "1,1,2,1,0.5" and loaded["weights"]["visible"] is True
    assert loaded["outliers"]["visible"] is False
    bad = run_guarded(lambda x: mp.on_merge_to_file(ctx, x), {**f, "weights": "1,2", "overwrite": True})
    assert bad["status"].startswith("weights has 2 values but TIES merges 5 fine-tuned models")


def test_refresh_fills_every_picker(ctx, tmp_path):
    write_tiny_sd1(tmp_path / "models" / "g.safetensors", 9)
    out = mp.on_refresh(ctx, {})
    assert all("g.safetensors" in out[f"model_{s}"]["choices"] for s in "abcdef")


def test_panels_do_not_import_each_other():
    import ast
    import inspect
    for mod, other in ((mp, "recipe_panel"), (rp, "merge_panel")):
        tree = ast.parse(inspect.getsource(mod))
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert other not in names, (mod.__name__, other)
