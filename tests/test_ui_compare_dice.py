"""The tab's Compare section, block-weight curve and Random weights panel (handlers, no browser),
and the X/Y/Z `[Alloy] Random seed` axis through the stand-in grid."""
from __future__ import annotations

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from tests.ui_fixtures import write_tiny_sd1  # noqa: E402
from tests.webui_standin.harness import make_world  # noqa: E402

from merger.ui import build  # noqa: E402
from merger.ui import blocks_editor as be  # noqa: E402
from merger.ui import compare_panel as cp  # noqa: E402
from merger.ui import dice_panel as dp  # noqa: E402
from merger.ui import fields as fl  # noqa: E402
from merger.ui.context import TabContext  # noqa: E402
from merger.ui.standalone import make_session  # noqa: E402
from merger.ui.wiring import run_guarded  # noqa: E402


@pytest.fixture
def ctx(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_sd1(models / "a.safetensors", 1)
    write_tiny_sd1(models / "b.safetensors", 2)
    return TabContext(make_session(str(models), str(tmp_path / "data")), live=False)


def _fields(**over):
    f = dict(fl.RECIPE_DEFAULTS)
    f.update(model_a="a.safetensors", model_b="b.safetensors", out_name="rolled", overwrite=False, arch="sd1")
    f.update(over)
    return f


def test_compare_shows_plot_and_table(ctx):
    out = cp.on_compare(ctx, {"cmp_a": "a.safetensors", "cmp_b": "b.safetensors"})
    img = out["cmp_plot"]
    assert img.size[0] >= 600 and img.size[1] >= 300
    assert np.asarray(img.convert("L")).std() > 10                     # a chart, not a blank image
    assert out["cmp_table"].count("\n") == 2 + 26 + 4 - 1 and "| OUT11 |" in out["cmp_table"]
    assert "SD1.x" in out["status"]
    assert run_guarded(lambda f: cp.on_compare(ctx, f), {"cmp_a": "a.safetensors"}) == \
        {"status": "Choose the two models to compare."}
    assert cp.on_use_ab(ctx, _fields()) == {"cmp_a": "a.safetensors", "cmp_b": "b.safetensors"}


def test_curve_follows_lists_tokens_and_ignores_bad_text(ctx):
    plain = be.on_curve(ctx, _fields(alpha_blocks="GRAD_V"))["weights_plot"]
    tokens = be.on_curve(ctx, _fields(alpha_blocks="R", beta_blocks="0.2," * 25 + "U"))["weights_plot"]
    assert plain.size[1] >= 150 and np.asarray(plain).std() > 5
    assert not np.array_equal(np.asarray(plain), np.asarray(tokens))
    assert be.on_curve(ctx, _fields(alpha_blocks="1,2,3")) == {}
    assert "weights_plot" in be.on_curve(ctx, _fields(arch="sdxl", alpha_blocks="R"))
    assert "random tokens" in be.show_sliders(ctx, _fields(alpha_blocks="R", blocks_target="alpha"))["status"]


def test_roll_standalone_writes_n_merges_with_their_draws(ctx, tmp_path):
    out = dp.on_roll(ctx, _fields(alpha_blocks="R", seed=40, roll_n=3))
    paths = out["status"].split(": ", 1)[1].split(", ")
    assert [p.rsplit("-", 1)[1] for p in paths] == ["40.safetensors", "41.safetensors", "42.safetensors"]
    assert out["axis_values"] == "40,41,42" and out["roll_out"].count("seed **") == 3
    from merger.io import open_source
    from merger.metadata import recipe_from_metadata
    with open_source(paths[1]) as src:
        recipe = recipe_from_metadata(src.metadata)
    r = np.random.RandomState(41).random_sample(26)
    assert recipe.seed == 41 and recipe.dice["alpha"] == "R"
    assert [float(x) for x in recipe.alpha_blocks.split(",")] == [float(np.round(x, 3)) for x in r]
    history = ctx.session.history.entries()
    assert sum(1 for e in history if e["kind"] == "file") == 3
    msg = run_guarded(lambda f: dp.on_roll(ctx, f), _fields(alpha_blocks="0.5", roll_n=2))
    assert "R, U, X or D" in msg["status"]
    assert "between 1 and 100" in run_guarded(lambda f: dp.on_roll(ctx, f), _fields(alpha_blocks="R",
                                                                                   roll_n=0))["status"]


def test_roll_live_prepares_the_grid(ctx):
    ctx.live = True
    out = dp.on_roll(ctx, _fields(alpha_blocks="U", seed=-1, roll_n=4))
    seeds = [int(s) for s in out["axis_values"].split(",")]
    assert len(set(seeds)) == 4 and "[Alloy] Random seed" in out["status"]


def test_tab_builds_with_the_new_sections(ctx):
    _, ui = build(ctx.session, live=False)
    for name in ("cmp_a", "cmp_b", "cmp_run", "cmp_plot", "cmp_table", "weights_plot", "seed", "roll",
                 "roll_n", "roll_out", "dice_upper", "dice_lower", "dice_max", "dice_min", "dice_round"):
        assert name in ui, name
    recipe = fl.recipe_from_fields(_fields(alpha_blocks="X", dice_upper="0.9", dice_lower="0.1", dice_round=2))
    assert recipe.dice == {"upper": "0.9", "lower": "0.1", "max": "1", "min": "0", "round": 2}
    assert fl.recipe_from_fields(_fields(alpha_blocks="0.1," * 25 + "0.2")).dice is None
    back = fl.fields_from_recipe(recipe.replace(dice={**recipe.dice, "seed": 5, "alpha": "X"}))
    assert back["dice_upper"] == "0.9" and back["dice_round"] == 2


def _grid(tmp_path, draft):
    w = make_world(tmp_path)
    from merger.webui import register
    cls = register(data_dir=str(tmp_path / "data"))
    w.scripts.scripts_data.append(w.scripts.ScriptClassData(cls, "alloy.py", str(tmp_path), None))
    w.callbacks.before_ui_callback()
    session = cls.alloy_session
    session.set_draft(draft(w))
    grid = w.xyz.Script()
    grid.ui(False)
    return w, session, grid


def test_random_seed_axis_one_merge_per_cell_labels_show_draws(tmp_path):
    from merger.recipe import Recipe
    w, session, grid = _grid(tmp_path, lambda w: Recipe(model_a=w.paths["a"], model_b=w.paths["b"],
                                                        alpha_blocks="R"))
    opts = grid.current_axis_options
    i = [o.label for o in opts].index("[Alloy] Random seed")
    from modules import processing, scripts
    p = processing.StableDiffusionProcessing(seed=1, scripts_runner=scripts.ScriptRunner())
    results = grid.run(p, i, "7,-1,7", [o.label for o in opts].index("Seed"), "1,2")
    assert len(results) == 6
    live = [e for e in session.history.entries() if e["kind"] == "live"]
    assert len(live) == 3                                # seeds 7, new, 7: the second 7 merges again
    seeds = [e["recipe"]["seed"] for e in reversed(live)]
    assert seeds[0] == seeds[2] == 7 and seeds[1] != -1
    r = np.random.RandomState(7).random_sample(26)
    assert live[-1]["recipe"]["alpha_blocks"] == ",".join(repr(float(np.round(x, 3))) for x in r)
    label = opts[i].format_value(p, opts[i], 7)
    assert label.startswith("seed 7: alpha ") and repr(float(np.round(r[0], 3))) + ", " in label
    xs = [-1, 3]
    opts[i].confirm(p, xs)
    assert xs[0] != -1 and xs[1] == 3


def test_live_merge_with_tokens_reports_the_seed_and_records_the_draw(tmp_path):
    from merger.session import Session
    from merger.ui import merge_panel as mp
    from merger.webui import WebUIHost
    w = make_world(tmp_path)
    session = Session(WebUIHost(), str(tmp_path / "data"))
    ctx = TabContext(session, live=True)
    f = _fields(model_a=w.paths["a"], model_b=w.paths["b"], alpha_blocks="R", seed=5)
    out = run_guarded(lambda x: mp.on_merge(ctx, x), f)
    assert "keys merged" in out["status"] and "Random seed 5." in out["status"], out
    r = np.random.RandomState(5).random_sample(26)
    want = ",".join(repr(float(np.round(x, 3))) for x in r)
    assert session.live.recipe.alpha_blocks == want and session.live.recipe.dice["alpha"] == "R"
    assert session.history.last_recipe()["alpha_blocks"] == want
    again = run_guarded(lambda x: mp.on_merge(ctx, x), f)          # same seed and tokens: already loaded
    assert "already loaded" in session.last_message, again
