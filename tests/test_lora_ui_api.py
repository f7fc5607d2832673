"""LoRA panel handlers and the HTTP router, on small files (no browser)."""
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from merger.lora.api import create_lora_router
from merger.lora.synth import random_module
from merger.ui.lora_panel import list_loras, make_resolver, run_op


def make(path, seed):
    g = torch.Generator().manual_seed(seed)
    sd = random_module("lora_unet_down_blocks_0_attentions_0_proj_in", 12, 10, 4, 4.0, gen=g)
    save_file(sd, str(path))


def test_panel_merge_resize_and_errors(tmp_path):
    make(tmp_path / "a.safetensors", 1)
    make(tmp_path / "b.safetensors", 2)
    assert list_loras(str(tmp_path)) == ["a.safetensors", "b.safetensors"]
    resolve = make_resolver(None, str(tmp_path))
    status, report = run_op("merge", {"loras": "a.safetensors:1.5\nb.safetensors:-1.5", "mode": "svd", "rank": 2,
                                      "out": "m", "device": "cpu"}, resolve)
    assert status.startswith("merge: 1 modules") and (tmp_path / "m.safetensors").exists()
    assert "Largest relative errors" in report
    status, report = run_op("resize", {"loras": "m.safetensors", "rank": 1, "dynamic": "none", "out": "r",
                                       "device": "cpu"}, resolve)
    assert status.startswith("resize") and "rank 2 -> 1" in report
    status, _ = run_op("merge", {"loras": "a.safetensors:1", "mode": "concat", "out": "m", "device": "cpu"}, resolve)
    assert status.startswith("Error:") and "exists" in status


def test_router(tmp_path):
    make(tmp_path / "a.safetensors", 1)
    app = FastAPI()
    app.include_router(create_lora_router(lambda name, kind: str(tmp_path / name)))
    c = TestClient(app)
    r = c.post("/alloy/v1/lora/merge", json={"loras": [{"path": "a.safetensors", "ratio": -1}], "mode": "concat",
                                             "out": "o.safetensors", "device": "cpu"})
    assert r.status_code == 200 and r.json()["modules"] == 1
    r = c.post("/alloy/v1/lora/resize", json={"lora": "a.safetensors", "out": "x.safetensors"})
    assert r.status_code == 400 and "--rank" in r.json()["detail"]
    r = c.post("/alloy/v1/lora/extract", json={"tuned": "a.safetensors"})
    assert r.status_code == 400 and "'base'" in r.json()["detail"]
