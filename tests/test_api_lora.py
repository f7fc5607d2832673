"""The LoRA routes are part of the session's REST API (WebUI and standalone): names resolve in the
host's LoRA folder, outputs land there, bad input is a 400 with one sentence."""
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from merger.api import create_router
from merger.lora.synth import random_module
from merger.session import Session, StandaloneHost
from merger.settings import Settings


def test_lora_routes_through_session(tmp_path):
    models, loras = tmp_path / "models", tmp_path / "loras"
    models.mkdir(), loras.mkdir()
    for name, seed in (("big", 1), ("small", 2)):
        g = torch.Generator().manual_seed(seed)
        save_file(random_module("lora_unet_down_blocks_0_attentions_0_proj_in", 12, 10, 4, 4.0, gen=g),
                  str(loras / f"{name}.safetensors"))
    session = Session(StandaloneHost(str(models), str(loras)), str(tmp_path / "data"), Settings())
    app = FastAPI()
    app.include_router(create_router(session))
    client = TestClient(app)
    body = {"loras": [{"path": "big.safetensors", "ratio": 1.5}, {"path": "small.safetensors", "ratio": -1.5}],
            "mode": "svd", "rank": 2, "out": "slider", "device": "cpu"}
    r = client.post("/alloy/v1/lora/merge", json=body)
    assert r.status_code == 200, r.text
    out = loras / "slider.safetensors"
    assert out.exists() and any(k.endswith("lora_down.weight") for k in load_file(str(out)))
    r = client.post("/alloy/v1/lora/merge", json=body)  # exists, no overwrite
    assert r.status_code == 400 and "exist" in r.json()["detail"]
    r = client.post("/alloy/v1/lora/resize", json={"out": "x"})
    assert r.status_code == 400 and "lora" in r.json()["detail"]
