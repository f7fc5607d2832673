"""Alloy's routes sit behind the WebUI's --api-auth exactly like /sdapi (the stand-in of
modules/api/api.py is v1.10.1's Api: HTTP basic, compare_digest, 401), and GET /alloy/v1/models."""
import types

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.webui_standin.harness import make_world

ROUTES = [("get", "/alloy/v1/status", None), ("get", "/alloy/v1/models", None), ("get", "/alloy/v1/presets", None),
          ("post", "/alloy/v1/merge", {"recipe": {"model_a": "A.safetensors", "model_b": "B.safetensors"}}),
          ("post", "/alloy/v1/restore", None), ("post", "/alloy/v1/save", {"name": "s"}),
          ("post", "/alloy/v1/lora/merge", {"loras": ["x:1"], "mode": "concat", "out": "o"})]


def _webui_app(tmp_path, api_auth, with_api=True):
    """What webui.py does at start: create_api(app) (the Api object, with --api), then the
    app_started callbacks, where Alloy mounts its router."""
    w = make_world(tmp_path)
    w.shared.cmd_opts.api_auth = api_auth
    from merger.webui import register
    from modules import call_queue
    from modules.api.api import Api
    session = register(str(tmp_path / "data")).alloy_session
    app = FastAPI()
    if with_api:
        Api(app, call_queue.queue_lock)
    w.callbacks.app_started_callback(None, app)
    return w, session, TestClient(app)


def test_api_auth_guards_every_alloy_route_like_sdapi(tmp_path):
    w, session, c = _webui_app(tmp_path, "alice:s3cret,bob:pw")
    assert c.get("/sdapi/v1/sd-models").status_code == 401
    before = session.status()
    for auth in (None, ("alice", "wrong"), ("mallory", "s3cret")):
        sd = c.get("/sdapi/v1/sd-models", auth=auth)
        assert sd.status_code == 401
        for method, path, body in ROUTES:
            r = getattr(c, method)(path, **({"json": body} if body else {}), auth=auth)
            assert (r.status_code, r.json(), r.headers["www-authenticate"]) == \
                (401, sd.json(), sd.headers["www-authenticate"]), (path, auth)
    assert session.status()["merged"] is before["merged"] is False
    assert not (w.models / "s.safetensors").exists()
    ok = ("bob", "pw")
    assert c.get("/sdapi/v1/sd-models", auth=ok).status_code == 200
    assert c.get("/alloy/v1/status", auth=ok).status_code == 200
    r = c.post("/alloy/v1/merge", json=ROUTES[3][2], auth=("alice", "s3cret"))
    assert r.status_code == 200 and session.live.recipe is not None, r.text


def test_api_auth_without_api_flag_uses_the_webui_check(tmp_path):
    """--api-auth without --api: no /sdapi routes to copy from; Alloy binds the WebUI's Api.auth."""
    w, session, c = _webui_app(tmp_path, "alice:s3cret", with_api=False)
    assert c.get("/alloy/v1/status").status_code == 401
    assert c.get("/alloy/v1/status", auth=("alice", "s3cret")).status_code == 200


def test_no_api_auth_means_open_routes_and_models_lists_checkpoints(tmp_path):
    w, session, c = _webui_app(tmp_path, None)
    r = c.get("/alloy/v1/models")
    assert r.status_code == 200
    models = r.json()["models"]
    assert models == list(w.sd_models.checkpoint_tiles()) and len(models) == 3
    assert all(m.split(" [")[0] in ("A.safetensors", "B.safetensors", "C.safetensors") for m in models)
    titled = {"model_a": models[0], "model_b": models[1], "alpha": 0.5}      # the names merge by title
    assert c.post("/alloy/v1/merge", json={"recipe": titled}).status_code == 200


def test_models_route_standalone(tmp_path):
    from merger.api import create_router
    from merger.session import Session, StandaloneHost
    from tests.fixtures import write_tiny
    (tmp_path / "sub").mkdir()
    write_tiny(tmp_path / "B.safetensors", "sd1", seed=2)
    write_tiny(tmp_path / "sub" / "a.safetensors", "sd1", seed=1)
    (tmp_path / "notes.txt").write_text("x")
    app = FastAPI()
    app.include_router(create_router(Session(StandaloneHost(str(tmp_path)), str(tmp_path / ".alloy"))))
    c = TestClient(app)
    assert c.get("/alloy/v1/models").json() == {"models": ["B.safetensors", "sub/a.safetensors"]}
    r = c.post("/alloy/v1/merge", json={"recipe": {"model_a": "sub/a.safetensors", "model_b": "B.safetensors"},
                                        "target": "file", "name": "sub/out"})
    assert r.status_code == 200 and (tmp_path / "sub" / "out.safetensors").exists(), r.text
    assert types.SimpleNamespace(**c.get("/alloy/v1/models").json()).models[-1] == "sub/out.safetensors"
