"""The Alloy tab over a real Session + StandaloneHost: build, merge to file, recipes in and out."""
from __future__ import annotations

import json

import pytest

gr = pytest.importorskip("gradio")

from tests.ui_fixtures import write_tiny_sd1  # noqa: E402

from merger.recipe import Recipe  # noqa: E402
from merger.ui import build  # noqa: E402
from merger.ui import blocks_logic as bl  # noqa: E402
from merger.ui import fields as fl  # noqa: E402
from merger.ui import merge_panel as mp  # noqa: E402
from merger.ui import recipe_panel as rp  # noqa: E402
from merger.ui.context import TabContext  # noqa: E402
from merger.ui.inspect_panel import on_inspect  # noqa: E402
from merger.ui.standalone import make_session  # noqa: E402
from merger.ui.wiring import run_guarded  # noqa: E402


@pytest.fixture
def session(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_sd1(models / "a.safetensors", 1)
    write_tiny_sd1(models / "b.safetensors", 2)
    return make_session(str(models), str(tmp_path / "data"))


@pytest.fixture
def ctx(session):
    return TabContext(session, live=False)


def _fields(**over):
    f = dict(fl.RECIPE_DEFAULTS)
    f.update(model_a="a.safetensors", model_b="b.safetensors", out_name="out", overwrite=False)
    f.update(over)
    return f


def test_build_standalone_and_live(session):
    blocks, ui = build(session, live=False)
    assert isinstance(blocks, gr.Blocks)
    for name in fl.RECIPE_FIELDS + bl.SLIDER_NAMES + ("status", "recipe_json", "merge_file", "preset",
                                                      "png_image", "meta_model", "history_pick", "arch"):
        assert name in ui, name
    assert ui["model_a"].choices == ["a.safetensors", "b.safetensors"]
    assert ui["merge"].visible is False and ui["merge_file"].visible is True
    assert ui["restore"].visible is False and ui["save"].visible is False
    _, live_ui = build(session, live=True)
    assert live_ui["merge"].visible is True and live_ui["restore"].visible is True
    assert len(bl.SLIDER_NAMES) == 61
    assert sum(1 for n in bl.SLIDER_NAMES if ui[n].visible) == 26


def test_bound_handler_maps_names_and_catches_errors(session):
    """The function Gradio calls: dict of components in, list of outputs out, errors in status."""
    blocks, ui = build(session, live=False)
    dep = next(i for i, d in enumerate(blocks.dependencies)
               if d["targets"] == [ui["to_json"]._id] and d["trigger"] == "click")
    fn = blocks.fns[dep].fn
    outs = [blocks.blocks[i] for i in blocks.dependencies[dep]["outputs"]]
    values = {ui[n]: v for n, v in _fields().items() if n in fl.RECIPE_FIELDS}
    result = dict(zip(outs, fn(values)))
    assert json.loads(result[ui["recipe_json"]])["model_b"] == "b.safetensors"
    values[ui["model_a"]] = None
    result = dict(zip(outs, fn(values)))
    assert result[ui["status"]] == "Choose model A first."


def test_recipe_fields_round_trip():
    f = _fields(mode="Triple sum", model_c="c.safetensors", alpha=0.3, beta=0.6, alpha_blocks="GRAD_V",
                beta_blocks=",".join(["0.1"] * 26), elemental="IN01:attn:0.5", exclude="VAE",
                adjust_0=0.1, adjust_4=-0.2, dtype="bf16", prune=True, seed=7, compute_dtype="fp64")
    recipe = fl.recipe_from_fields(f)
    assert recipe.mode == "triple_sum" and recipe.adjust == "0.1,0,0,0,-0.2,0,0,0"
    back = fl.fields_from_recipe(Recipe.from_json(recipe.to_json()), ["a.safetensors", "b.safetensors"])
    for name in fl.RECIPE_FIELDS:
        assert back[name] == f[name], name


def test_model_paths_map_to_names():
    names = ["sub/a.safetensors", "b.ckpt [1234abcd]"]
    assert fl.match_model_name("/x/y/a.safetensors", names) == "sub/a.safetensors"
    assert fl.match_model_name("b.ckpt", names) == "b.ckpt [1234abcd]"
    assert fl.match_model_name("zzz.safetensors", names) == "zzz.safetensors"


def test_model_a_detects_architecture(ctx):
    from merger.ui.blocks_editor import on_model_a
    assert on_model_a(ctx, {"model_a": "a.safetensors"}) == {"arch": "sd1"}
    out = run_guarded(lambda f: on_model_a(ctx, f), {"model_a": "missing.safetensors"})
    assert "missing.safetensors" in out["status"]


def test_merge_to_file_then_load_back(ctx, session, tmp_path):
    f = _fields(alpha=0.25, alpha_blocks="FLAT_75")
    out = run_guarded(lambda x: mp.on_merge_to_file(ctx, x), f)
    path = tmp_path / "models" / "out.safetensors"
    assert path.is_file(), out
    assert "keys merged" in out["status"]
    assert json.loads(out["recipe_json"])["alpha_blocks"] == "FLAT_75"
    assert "out.safetensors" in out["model_a"]["choices"]           # pickers refreshed
    (label,) = out["history_pick"]["choices"]

    # refuses to overwrite unless asked
    again = run_guarded(lambda x: mp.on_merge_to_file(ctx, x), f)
    assert "out.safetensors" in again["status"] and "tick 'Overwrite" in again["status"]
    again = run_guarded(lambda x: mp.on_merge_to_file(ctx, x), {**f, "overwrite": True})
    assert "keys merged" in again["status"]

    view = {"arch": "sd1", "blocks_target": "alpha"}
    loaded = rp.on_load_history(ctx, {**view, "history_pick": label})
    assert loaded["alpha"] == 0.25 and loaded["alpha_blocks"] == "FLAT_75"
    assert loaded["model_a"] == "a.safetensors"                      # paths shown as the host's names
    assert [loaded[n]["value"] for n in bl.SLIDER_NAMES[:3]] == [0, 0.75, 0.75]
    assert set(fl.RECIPE_FIELDS) <= set(loaded)

    from_ckpt = rp.on_load_checkpoint(ctx, {**view, "meta_model": "out.safetensors"})
    assert from_ckpt["alpha_blocks"] == "FLAT_75" and from_ckpt["model_b"] == "b.safetensors"
    assert "from out.safetensors" in from_ckpt["status"]

    current = rp.on_load_current(ctx, view)                       # standalone: newest history entry
    assert current["alpha"] == 0.25

    described = on_inspect(ctx, {"inspect_model": "out.safetensors"})
    assert "sd1" in described["inspect_out"] and "FLAT_75" in described["inspect_out"]


def test_errors_are_sentences(ctx):
    cases = [
        (lambda f: mp.on_merge_to_file(ctx, f), _fields(model_a=None)),
        (lambda f: mp.on_merge_to_file(ctx, f), _fields(model_b="nope.safetensors")),
        (lambda f: mp.on_merge_to_file(ctx, f), _fields(out_name="  ")),
        (lambda f: mp.on_merge(ctx, f), _fields()),                  # standalone: no live model
        (lambda f: rp.on_apply_json(ctx, f), {"recipe_json": "{not json"}),
        (lambda f: rp.on_load_checkpoint(ctx, f), {"meta_model": "a.safetensors"}),
        (lambda f: rp.on_load_history(ctx, f), {"history_pick": None}),
    ]
    for fn, f in cases:
        out = run_guarded(fn, f)
        assert set(out) == {"status"}, out
        msg = out["status"]
        assert msg and "Traceback" not in msg and not msg.startswith("Unexpected"), msg
    assert "a.safetensors" in run_guarded(*cases[5])["status"]


def test_apply_json_fills_controls_and_view(ctx):
    r = Recipe(model_a="a.safetensors", model_b="b.safetensors", model_c="a.safetensors",
               mode="add_difference", calc="trainDifference", alpha=0.7)
    out = rp.on_apply_json(ctx, {"arch": "sd1", "blocks_target": "alpha", "recipe_json": r.to_json()})
    assert out["mode"] == "Add difference"
    assert out["calc"]["value"] == "trainDifference"
    assert out["model_c"]["value"] == "a.safetensors" and out["model_c"]["visible"] is True
    assert out["beta"]["value"] == 0.25 and out["beta"]["visible"] is False
    assert out["alpha"] == 0.7
    assert [out[n]["value"] for n in bl.SLIDER_NAMES[:26]] == [0.7] * 26


def test_refresh_sees_new_files(ctx, tmp_path):
    write_tiny_sd1(tmp_path / "models" / "c.safetensors", 3)
    out = mp.on_refresh(ctx, {})
    assert "c.safetensors" in out["model_c"]["choices"]
    assert "c.safetensors" in out["meta_model"]["choices"]


def test_draft_follows_controls(ctx, session):
    mp.on_draft(ctx, _fields(alpha=0.9))
    assert session.draft is not None and session.draft.alpha == 0.9
    mp.on_draft(ctx, _fields(model_a=None))                        # unfinished setup: silently ignored
    assert session.draft.alpha == 0.9
