"""REST API routes with FastAPI's TestClient against the stand-in WebUI."""
from tests.webui_standin.harness import api_world, diff_keys, snapshot

_client = api_world


def test_merge_status_save_restore(tmp_path):
    w, s, c = _client(tmp_path)
    orig = snapshot(w.model)
    r = c.post("/alloy/v1/merge", json={"recipe": {"model_a": "A.safetensors", "model_b": "B.safetensors", "alpha": 0.4}})
    assert r.status_code == 200, r.text
    assert r.json()["keys_merged"] > 250
    st = c.get("/alloy/v1/status").json()
    assert st["merged"] and st["hash"] == r.json()["hash"]
    r = c.post("/alloy/v1/save", json={"name": "saved", "dtype": "fp16"})
    assert r.status_code == 200, r.text
    assert (w.models / "saved.safetensors").exists()
    r = c.post("/alloy/v1/save", json={"name": "saved"})
    assert r.status_code == 400 and "exists" in r.json()["detail"]
    assert '"overwrite": true' in r.json()["detail"]          # the API's word, not the CLI's --overwrite
    r = c.post("/alloy/v1/merge", json={"recipe": {"model_a": "A.safetensors", "model_b": "C.safetensors"},
                                        "target": "file", "name": "f1", "dtype": "fp32"})
    assert r.status_code == 200 and r.json()["path"].endswith("f1.safetensors")
    assert c.post("/alloy/v1/restore").status_code == 200
    assert not diff_keys(orig, snapshot(w.model))
    assert "presets" in c.get("/alloy/v1/presets").json()


def test_bad_input_is_4xx_and_changes_nothing(tmp_path):
    w, s, c = _client(tmp_path)
    good = {"model_a": "A.safetensors", "model_b": "B.safetensors", "alpha": 0.4}
    assert c.post("/alloy/v1/merge", json={"recipe": good}).status_code == 200
    before = snapshot(w.model)
    bad = [
        {"recipe": dict(good, alpha="x")},
        {"recipe": dict(good, mode="nonsense")},
        {"recipe": dict(good, model_b="missing.safetensors")},
        {"recipe": dict(good, bogus=1)},
        {"recipe": dict(good, alpha_blocks="1,2,3")},
        {"recipe": good, "target": "moon"},
        {"recipe": good, "target": "file"},
        {"recipe": dict(good, mode="add_difference")},
    ]
    for body in bad:
        r = c.post("/alloy/v1/merge", json=body)
        assert 400 <= r.status_code < 500, (body, r.text)
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    r = c.post("/alloy/v1/merge", json={"nope": 1})
    assert r.status_code == 400 and "unknown field" in r.json()["detail"]
    assert not diff_keys(before, snapshot(w.model))
    assert s.live.recipe.alpha == 0.4


def test_unexpected_error_is_logged_and_answered_with_a_sentence(tmp_path, caplog):
    """A bug inside a route (here: a host whose model list breaks) is a 500 with one sentence, and
    the traceback goes to the log; expected problems stay 400."""
    import logging
    w, s, c = _client(tmp_path)

    def broken():
        raise KeyError("boom")
    s.host.list_models = broken
    with caplog.at_level(logging.ERROR, logger="alloy"):
        r = c.get("/alloy/v1/models")
    assert r.status_code == 500 and r.json()["detail"].startswith("Alloy's model list failed with an unexpected KeyError")
    assert any(rec.exc_info and "boom" in str(rec.exc_info[1]) for rec in caplog.records)
    assert c.get("/alloy/v1/status").status_code == 200
