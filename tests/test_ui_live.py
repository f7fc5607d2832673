"""The tab's live buttons (Merge, Current merge, Save, Restore) over the WebUI stand-in."""
import pytest

pytest.importorskip("gradio")

from tests.webui_standin.harness import make_world, snapshot  # noqa: E402

from merger.ui import fields as fl  # noqa: E402
from merger.ui import merge_panel as mp  # noqa: E402
from merger.ui import recipe_panel as rp  # noqa: E402
from merger.ui.context import TabContext  # noqa: E402
from merger.ui.wiring import run_guarded  # noqa: E402


def test_live_merge_save_restore(tmp_path):
    import torch
    from merger.session import Session
    from merger.webui import WebUIHost
    w = make_world(tmp_path)
    session = Session(WebUIHost(), str(tmp_path / "data"))
    ctx = TabContext(session, live=True)
    before = snapshot(w.model)
    f = {**fl.RECIPE_DEFAULTS, "model_a": w.paths["a"], "model_b": w.paths["b"], "alpha": 0.4,
         "out_name": "saved", "overwrite": False}
    out = run_guarded(lambda x: mp.on_merge(ctx, x), f)
    assert "keys merged" in out["status"], out
    assert any(not torch.equal(before[k], v) for k, v in snapshot(w.model).items())

    current = rp.on_load_current(ctx, {"arch": "sd1", "blocks_target": "alpha"})
    assert current["alpha"] == 0.4 and "the current merge" in current["status"]

    saved = run_guarded(lambda x: mp.on_save(ctx, x), {**f, "dtype": "fp32"})
    assert (w.models / "saved.safetensors").is_file(), saved

    restored = run_guarded(lambda x: mp.on_restore(ctx, x), {})
    assert "Restored" in restored["status"]
    assert all(torch.equal(before[k], v) for k, v in snapshot(w.model).items())
