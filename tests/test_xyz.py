"""X/Y/Z axes through the stand-in grid: one merge per distinct recipe, restore after the grid."""
import pytest

from tests.webui_standin.harness import diff_keys, make_world, snapshot


def _setup(tmp_path):
    w = make_world(tmp_path)
    from merger.recipe import Recipe
    from merger.webui import register
    cls = register(data_dir=str(tmp_path / "data"))
    w.scripts.scripts_data.append(w.scripts.ScriptClassData(cls, "alloy.py", str(tmp_path), None))
    w.callbacks.before_ui_callback()
    session = cls.alloy_session
    session.set_draft(Recipe(model_a=w.paths["a"], model_b=w.paths["b"], alpha=0.5))
    grid = w.xyz.Script()
    grid.ui(False)
    labels = [o.label for o in grid.current_axis_options]
    return w, session, grid, labels


def _run(w, grid, *args):
    from modules import processing, scripts
    p = processing.StableDiffusionProcessing(seed=1, scripts_runner=scripts.ScriptRunner())
    return grid.run(p, *args)


def _merges(session):
    return sum(1 for e in session.history.entries() if e["kind"] == "live")


@pytest.mark.parametrize("alpha_on_x", [True, False])
def test_five_alphas_three_seeds_five_merges(tmp_path, alpha_on_x):
    w, session, grid, labels = _setup(tmp_path)
    orig = snapshot(w.model)
    a, s = labels.index("[Alloy] Alpha"), labels.index("Seed")
    alphas, seeds = "0.1,0.3,0.5,0.7,0.9", "1,2,3"
    args = (a, alphas, s, seeds) if alpha_on_x else (s, seeds, a, alphas)
    results = _run(w, grid, *args)
    assert len(results) == 15
    assert _merges(session) == 5
    infos = [r.infotexts[0] for _, r in results]
    assert all("Alloy hash" in t for t in infos) and len({t.split("Alloy hash: ")[1][:10] for t in infos}) == 5
    assert not diff_keys(orig, snapshot(w.model))          # restored after the grid (default setting)
    assert w.model.sd_checkpoint_info.filename == w.paths["a"] and "Alloy" not in w.model.sd_checkpoint_info.title


def test_grid_without_restore_keeps_last_and_model_b_axis(tmp_path):
    w, session, grid, labels = _setup(tmp_path)
    w.shared.opts.data["alloy_restore_after_xyz"] = False
    mb = labels.index("[Alloy] Model B")
    results = _run(w, grid, mb, "B.safetensors,C.safetensors", labels.index("Seed"), "1,2")
    assert _merges(session) == 2 and len(results) == 4
    assert session.live.recipe.model_b == w.paths["c"]
    from merger.errors import AlloyError
    with pytest.raises(AlloyError, match="not in the WebUI's checkpoint list"):
        _run(w, grid, mb, "missing.safetensors", 0, "")


def test_block_weights_axis_accepts_quoted_lists_and_presets(tmp_path):
    w, session, grid, labels = _setup(tmp_path)
    bw = labels.index("[Alloy] Block weights alpha")
    lst = ",".join(["0.5"] * 26)
    _run(w, grid, bw, f'"{lst}",None')
    assert _merges(session) == 2


def _odd_checkpoint(path):
    """A checkpoint of another architecture (no UNet keys): merging it with A fails."""
    import torch
    from safetensors.torch import save_file
    save_file({"something.else.weight": torch.zeros(2, 2)}, str(path))


def test_a_failing_cell_stops_the_grid_instead_of_generating_unmerged_cells(tmp_path):
    """The real WebUI only logs a before_process error and goes on: the cell (and every later one)
    would be generated with the previous weights under the cell's label."""
    w, session, grid, labels = _setup(tmp_path)
    from modules import processing, scripts
    w.shared.opts.data["alloy_restore_after_xyz"] = False
    _odd_checkpoint(w.models / "D.safetensors")
    w.sd_models.list_models()
    runner = scripts.ScriptRunner()
    p = processing.StableDiffusionProcessing(seed=1, scripts_runner=runner)
    results = grid.run(p, labels.index("[Alloy] Model B"), "B.safetensors,D.safetensors,C.safetensors",
                       labels.index("Seed"), "1,2")
    assert [r.images != [] for _, r in results] == [True, True, False]     # B×2 made, D stopped it
    assert runner.errors and runner.errors[0][0] == "before_process"
    assert w.shared.state.interrupted
    assert session.live.recipe.model_b == w.paths["b"]


def test_grid_is_refused_before_it_starts_when_the_base_model_is_unknown(tmp_path):
    from merger.errors import AlloyError
    from merger.recipe import Recipe
    w, session, grid, labels = _setup(tmp_path)
    session.set_draft(Recipe(model_a=str(tmp_path / "gone.safetensors"), model_b=w.paths["b"]))
    with pytest.raises(AlloyError, match="not in the WebUI's checkpoint list"):
        _run(w, grid, labels.index("[Alloy] Alpha"), "0.2,0.4", labels.index("Seed"), "1")
    assert _merges(session) == 0


@pytest.mark.parametrize("override", [False, True])
def test_api_override_of_the_restore_setting_applies_to_the_grid(tmp_path, override):
    """The WebUI applies override_settings only inside each cell's generation and puts them back
    after it; the grid's end must still honour `alloy_restore_after_xyz` from the request."""
    w, session, grid, labels = _setup(tmp_path)
    from modules import processing, scripts
    w.shared.opts.data["alloy_restore_after_xyz"] = not override
    p = processing.StableDiffusionProcessing(seed=1, scripts_runner=scripts.ScriptRunner())
    p.override_settings = {"alloy_restore_after_xyz": override}
    grid.run(p, labels.index("[Alloy] Alpha"), "0.2,0.6", labels.index("Seed"), "1")
    assert _merges(session) == 2
    assert (session.live is None or session.live.recipe is None) is override
    assert w.shared.opts.data["alloy_restore_after_xyz"] is (not override)     # put back after each cell
