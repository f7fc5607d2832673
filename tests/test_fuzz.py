"""Fuzzing every route of the REST API (`/alloy/v1/*`, `lora/*` included) and the CLI readers.

Bodies are valid requests with fields replaced by arbitrary JSON (huge numbers, NaN, infinity,
lists, objects, control characters) or path-like names (traversal, absolute paths, links out of
the folder, FIFOs, devices), or arbitrary JSON altogether. Every answer must be 200, 400 or 409
with a one-line sentence, and nothing may appear, change or vanish outside the models / LoRA
folders. The CLI readers get malformed safetensors headers, .ckpt bytes and recipe files and must
answer with exit code 0 or 2 and at most one `error:` line. ALLOY_FUZZ_EXAMPLES (default 1000)
sets the number of API cases (3/10 of it for each reader: 1900 cases in all); with it set, cases
are random rather than the same every run."""
from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import types

import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from merger.api import create_router
from merger.cli import main
from merger.lora.synth import random_module
from merger.session import Session, StandaloneHost
from merger.settings import Settings
from tests.webui_standin import tinysd
from tests.webui_standin.harness import api_world

EXAMPLES = int(os.environ.get("ALLOY_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="ALLOY_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=list(HealthCheck), database=None)
READERS = settings(FUZZ, max_examples=max(50, EXAMPLES * 3 // 10))

NAMES = ["A.safetensors", "B", "C.safetensors", "l.safetensors", "l", "fz", "sub/fz", "../outside/x", "/etc/passwd",
         "/dev/null", "escape/x", "escape/secret.safetensors", "fifo", "fifo.safetensors", "sub/../../outside/x",
         "a\nb", "", " ", "x" * 300, "~/x", "C:\\x", ".hidden", "/proc/self/mem", "null.safetensors", "x.ckpt"]
json_leaf = (st.none() | st.booleans() | st.integers(-(10 ** 30), 10 ** 30) | st.sampled_from([10 ** 400, -1, 0, 2])
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | st.sampled_from(NAMES))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
RECIPE = {"model_a": "A.safetensors", "model_b": "B.safetensors", "alpha": 0.3}
LORA = {"overwrite": True, "device": "cpu", "out": "fz"}
ROUTES = {
    "merge": {"recipe": RECIPE, "target": "live"},
    "merge ": {"recipe": RECIPE, "target": "file", "name": "fz", "overwrite": True},
    "save": {"name": "fz", "overwrite": True},
    "lora/merge": {**LORA, "loras": [{"path": "l.safetensors", "ratio": 1.0}], "mode": "concat"},
    "lora/resize": {**LORA, "lora": "l", "rank": 2},
    "lora/extract": {**LORA, "tuned": "B.safetensors", "base": "A.safetensors", "rank": 2},
    "lora/bake": {**LORA, "model": "A.safetensors", "loras": ["l.safetensors:1"]},
    "restore": None, "status": None, "models": None, "presets": None,
}
FIELDS = sorted({k for b in ROUTES.values() if b for k in b} | set(RECIPE) | {"mode", "calc", "hashes", "seed",
                 "alpha_blocks", "bake_vae", "dtype", "prune", "param", "dynamic", "blocks", "ratio", "x"})


def _world(tmp):
    """The stand-in WebUI (live merges, its LoRA folder) and a standalone app over small models,
    with links out, a FIFO and a device link in every folder, and a folder beside them that must
    not change."""
    small = tinysd.small_layout("sd1", every=8)
    w, s, c = api_world(tmp)
    loras, models2, outside = tmp / "models" / "Lora", tmp / "small", tmp / "outside"
    for d in (loras, models2, outside, tmp / "models" / "sub"):
        d.mkdir()
    g = torch.Generator().manual_seed(3)
    save_file(random_module("lora_unet_down_blocks_0_attentions_0_proj_in", 12, 10, 4, 4.0, gen=g),
              str(loras / "l.safetensors"))
    (outside / "secret.safetensors").write_bytes(b"secret")
    for name, seed in (("A", 1), ("B", 2)):       # small files keep valid LoRA extractions fast
        tinysd.write_checkpoint(models2 / f"{name}.safetensors", seed, torch.float16, small)
    folders = (str(w.models), str(loras), str(models2))
    for d in folders:
        os.symlink(outside, os.path.join(d, "escape"))
        os.symlink("/dev/null", os.path.join(d, "null.safetensors"))
        if d != str(w.models):     # the WebUI itself (its checkpoint list hashes every file) would hang on a FIFO
            os.mkfifo(os.path.join(d, "fifo.safetensors"))
    standalone = Session(StandaloneHost(str(models2), str(loras)), str(tmp / "data2"), Settings())
    app = FastAPI()
    app.include_router(create_router(standalone))
    special = [os.path.join(d, n) for d in folders for n in ("escape", "fifo.safetensors", "null.safetensors")
               if os.path.lexists(os.path.join(d, n))]
    return types.SimpleNamespace(webui=c, standalone=TestClient(app), outside=str(outside), folders=folders,
                                 special=special)


def _tree(folder) -> dict:
    out = {}
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            p = os.path.join(root, n)
            st_ = os.lstat(p)
            out[p] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return out


def _special(world) -> dict:
    """The links and the FIFO made at set-up: still there, still what they were."""
    return {p: os.lstat(p).st_mode if os.path.lexists(p) else None for p in world.special}


@st.composite
def requests(draw):
    route = draw(st.sampled_from(sorted(ROUTES)))
    template = ROUTES[route]
    if template is None or draw(st.integers(0, 9)) == 0:
        return route, (draw(json_value) if template is not None else None)
    body = json.loads(json.dumps(template))
    for _ in range(draw(st.integers(1, 3))):
        recipe = body.get("recipe")
        target = recipe if isinstance(recipe, dict) and draw(st.booleans()) else body
        own = sorted(target)
        field = draw(st.sampled_from(own if own and draw(st.integers(0, 3)) else FIELDS))
        if draw(st.integers(0, 5)) == 0:
            target.pop(field, None)
        else:
            target[field] = draw(json_value | st.sampled_from(NAMES))
    return route, body


def test_fuzz_every_route(tmp_path):
    world = _world(tmp_path)
    outside, special = _tree(world.outside), _special(world)

    @FUZZ
    @given(requests(), st.booleans())
    def check(req, webui):
        route, body = req
        client = world.webui if webui else world.standalone
        path = f"/alloy/v1/{route.strip()}"
        if route.strip() in ("status", "models", "presets"):
            r = client.get(path)
        else:
            r = client.post(path, **({} if body is None and route == "restore" else {"json": body}))
        assert r.status_code in (200, 400, 409), (route, body, r.status_code, r.text)
        if r.status_code != 200:
            detail = r.json()["detail"]
            assert isinstance(detail, str) and detail and "\n" not in detail, (route, body, r.text)
        assert _tree(world.outside) == outside and _special(world) == special
        for folder in world.folders:
            for p, (mode, _, _) in _tree(folder).items():
                assert os.path.isdir(p) or p.endswith((".safetensors", ".json", ".jsonl")) or p.endswith("escape"), p
    check()


def _one_line_exit(argv, capsys) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, err)
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


entry = st.fixed_dictionaries({}, optional={"dtype": json_value | st.sampled_from(["F32", "F16", "I64", "BOOL"]),
                                            "shape": json_value | st.lists(st.integers(-2, 4), max_size=3),
                                            "data_offsets": json_value | st.lists(st.integers(-2, 40), max_size=3)})
header = st.dictionaries(st.text(max_size=6), entry | json_value, max_size=4) | json_value


@READERS
@given(header, st.binary(max_size=48), st.integers(-8, 8))
def test_fuzz_safetensors_headers(capsys, head, data, skew):
    raw = json.dumps(head).encode()
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "f.safetensors")
        with open(p, "wb") as f:
            f.write(struct.pack("<Q", max(0, len(raw) + skew)) + raw + data)
        _one_line_exit(["inspect", p], capsys)


def _legacy() -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(2, 2)}}, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


LEGACY = _legacy()


@READERS
@given(st.integers(0, len(LEGACY)), st.lists(st.tuples(st.integers(0, len(LEGACY) - 1), st.integers(1, 255)),
                                              max_size=3), st.binary(max_size=64))
def test_fuzz_ckpt_bytes(capsys, cut, flips, tail):
    data = bytearray(LEGACY[:cut])
    for i, x in flips:
        if i < len(data):
            data[i] ^= x
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "f.ckpt")
        with open(p, "wb") as f:
            f.write(bytes(data) + (tail if cut == len(LEGACY) else b""))
        _one_line_exit(["inspect", p], capsys)


recipe_doc = st.dictionaries(st.sampled_from(FIELDS + ["model_c", "elemental", "include", "exclude", "adjust",
                                                       "beta", "gamma", "version", "type"]),
                             json_value | st.sampled_from(NAMES), max_size=6) | json_value


@READERS
@given(recipe_doc)
def test_fuzz_recipe_files(capsys, doc):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "r.json")
        with open(p, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        _one_line_exit(["run", p, "--out", os.path.join(d, "o.safetensors"), "--quiet"], capsys)
