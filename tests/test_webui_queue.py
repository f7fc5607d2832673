"""Alloy's user actions run as WebUI jobs: they wait for the generation queue (weights never change
under a running generation) and begin a job (a stale Interrupt does not stop them); X/Y/Z cells,
which merge inside a generation that holds the queue, must not wait for it."""
import threading

from tests.webui_standin.harness import api_world, diff_keys, make_world, snapshot

MERGE = {"recipe": {"model_a": "A.safetensors", "model_b": "B.safetensors", "alpha": 0.4}}


_client = api_world


def test_a_stale_interrupt_does_not_stop_the_next_merge(tmp_path):
    w, s, c = _client(tmp_path)
    w.shared.state.interrupt()               # the user stopped a generation earlier
    r = c.post("/alloy/v1/merge", json=MERGE)
    assert r.status_code == 200, r.text
    assert s.status()["merged"]
    assert w.shared.state.job == ""           # the job ended


def test_api_merge_waits_for_the_running_generation(tmp_path):
    w, s, c = _client(tmp_path)
    from modules import call_queue
    orig = snapshot(w.model)
    out = {}
    call_queue.queue_lock.acquire()           # a txt2img is sampling
    try:
        t = threading.Thread(target=lambda: out.setdefault("r", c.post("/alloy/v1/merge", json=MERGE)))
        t.start()
        t.join(1.0)
        assert t.is_alive() and "r" not in out
        assert not diff_keys(orig, snapshot(w.model))      # weights untouched while it samples
    finally:
        call_queue.queue_lock.release()
    t.join(30)
    assert out["r"].status_code == 200 and diff_keys(orig, snapshot(w.model))
    assert c.post("/alloy/v1/restore").status_code == 200
    assert not diff_keys(orig, snapshot(w.model))


def test_tab_merge_takes_the_queue_and_xyz_cells_do_not(tmp_path):
    w = make_world(tmp_path)
    from modules import call_queue, processing, scripts
    from merger.recipe import Recipe
    from merger.ui.context import TabContext
    from merger.ui.merge_panel import on_merge
    from merger.webui import register
    cls = register(data_dir=str(tmp_path / "data"))
    w.scripts.scripts_data.append(w.scripts.ScriptClassData(cls, "alloy.py", str(tmp_path), None))
    w.callbacks.before_ui_callback()
    session = cls.alloy_session
    fields = {"model_a": "A.safetensors", "model_b": "B.safetensors", "alpha": 0.3, "mode": "Weight sum",
              "calc": "normal"}
    seen = []
    real = session.merge_live
    session.merge_live = lambda *a, **k: (seen.append(call_queue.queue_lock.locked()), real(*a, **k))[1]
    on_merge(TabContext(session), fields)
    assert seen == [True] and not call_queue.queue_lock.locked()
    session.set_draft(Recipe(model_a=w.paths["a"], model_b=w.paths["b"]))
    grid = w.xyz.Script()
    grid.ui(False)
    labels = [o.label for o in grid.current_axis_options]
    done = []

    def generate():                            # the WebUI's API: txt2img under the queue lock
        with call_queue.queue_lock:
            p = processing.StableDiffusionProcessing(seed=1, scripts_runner=scripts.ScriptRunner())
            done.append(grid.run(p, labels.index("[Alloy] Alpha"), "0.2,0.6", labels.index("Seed"), "1"))
    t = threading.Thread(target=generate, daemon=True)
    t.start()
    t.join(30)
    assert done and len(done[0]) == 2, "an X/Y/Z cell waited for the queue its generation holds"
