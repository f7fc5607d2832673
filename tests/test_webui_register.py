"""scripts/alloy.py against the stand-in: callbacks, settings, infotext, checkpoint info, model change."""
import importlib.util
from pathlib import Path

import pytest

from tests.webui_standin.harness import make_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    """scripts/alloy.py calls register() with no folder: keep its history out of the repo's data/."""
    monkeypatch.setenv("ALLOY_DATA_DIR", str(tmp_path / "data"))


def _load_script():
    spec = importlib.util.spec_from_file_location("alloy.py", ROOT / "scripts" / "alloy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_registers_every_callback_and_settings(tmp_path):
    w = make_world(tmp_path)
    module = _load_script()
    cls = module.AlloyScript
    assert cls().show(False) is w.scripts.AlwaysVisible
    cm = w.callbacks.callback_map
    for cat in ("ui_tabs", "before_ui", "app_started", "ui_settings", "model_loaded"):
        assert len(cm["callbacks_" + cat]) == 1, cat
    assert Path(cls.alloy_session.data_dir) == w.tmp / "data"
    w.callbacks.ui_settings_callback()
    from merger.settings import OPTIONS, option_key
    for spec in OPTIONS:
        assert w.shared.opts.data_labels[option_key(spec.field)].section == ("alloy", "Alloy")
    w.callbacks.before_ui_callback()
    assert any(o.label == "[Alloy] Alpha" for o in w.xyz.axis_options)
    w.callbacks.before_ui_callback()                  # "Reload UI": no duplicate axes
    assert sum(o.label == "[Alloy] Alpha" for o in w.xyz.axis_options) == 1
    from fastapi import FastAPI
    app = FastAPI()
    w.callbacks.app_started_callback(None, app)
    assert any(getattr(r, "path", "") == "/alloy/v1/status" for r in app.routes)
    w.shared.opts.data["alloy_cache_gb"] = 0.5
    cls.alloy_session.restore()
    assert cls.alloy_session.cache.stats().budget == 1 << 29


def test_infotext_checkpoint_info_and_model_change(tmp_path):
    from merger.recipe import Recipe
    w = make_world(tmp_path)
    from modules import processing, scripts
    cls = _load_script().AlloyScript
    w.scripts.scripts_data.append(w.scripts.ScriptClassData(cls, "alloy.py", str(ROOT), None))
    session = cls.alloy_session
    real = w.model.sd_checkpoint_info
    r = Recipe(model_a="A.safetensors", model_b="B.safetensors", alpha=0.25)
    session.merge_live(r)
    info = w.model.sd_checkpoint_info
    assert info is not real and info.filename == real.filename
    assert info.shorthash == session.live.recipe.short_hash() == w.model.sd_model_hash
    p = processing.StableDiffusionProcessing(scripts_runner=scripts.ScriptRunner())
    out = processing.process_images(p)
    text = out.infotexts[0]
    assert f"Model hash: {info.shorthash}" in text and "Alloy recipe" in text
    assert p.extra_generation_params["Alloy merge"] == session.live.recipe.display_name()
    assert session.live is not None                      # generating did not reload A
    session.restore()
    assert w.model.sd_checkpoint_info is real and w.model.sd_model_hash == real.shorthash
    session.merge_live(r)
    w.sd_models.reload_model_weights(info=next(i for i in w.sd_models.checkpoints_list.values()
                                               if i.filename == w.paths["b"]))
    assert session.live is None                           # another checkpoint ends the merge
    assert session.status()["merged"] is False


def test_install_and_metadata_files():
    text = (ROOT / "install.py").read_text()
    assert "launch.is_installed" in text and "torch" not in text.split('"""')[2]
    assert "[Extension]" in (ROOT / "metadata.ini").read_text()


def test_reload_ui_keeps_the_live_merge(tmp_path):
    """"Reload UI" re-runs scripts/alloy.py (callbacks cleared) while the merged model stays loaded:
    the new registration must still know the merge, so Restore gives the original back."""
    from merger.recipe import Recipe
    from tests.webui_standin.harness import diff_keys, snapshot
    w = make_world(tmp_path)
    from modules import processing, scripts
    orig = snapshot(w.model)
    real = w.model.sd_checkpoint_info
    first = _load_script().AlloyScript.alloy_session
    first.merge_live(Recipe(model_a="A.safetensors", model_b="B.safetensors", alpha=0.25))
    w.callbacks.clear_callbacks()
    cls = _load_script().AlloyScript                      # the reload
    session = cls.alloy_session
    assert session.status()["merged"] and session.status()["hash"] == first.live.recipe.short_hash()
    w.scripts.scripts_data.append(w.scripts.ScriptClassData(cls, "alloy.py", str(ROOT), None))
    p = processing.StableDiffusionProcessing(scripts_runner=scripts.ScriptRunner())
    assert "Alloy hash" in processing.process_images(p).infotexts[0]
    session.restore()
    assert not diff_keys(orig, snapshot(w.model))
    assert w.model.sd_checkpoint_info is real
    assert len(w.callbacks.callback_map["callbacks_model_loaded"]) == 1
