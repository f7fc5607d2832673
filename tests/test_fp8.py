"""fp8 saves: the UNet stored as F8_E4M3 / F8_E5M2 by round-to-nearest from the float32 result,
text encoders and VAE as fp16; fp8 inputs are read as float32 with a warning; overflow refused."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file

from merger.errors import AlloyError
from merger.filemerge import merge_to_file
from merger.io import open_source
from merger.recipe import Recipe
from merger.settings import SAVE_DTYPES, Settings
from tests.fixtures import write_tiny

FP8 = {"fp8_e4m3fn": (torch.float8_e4m3fn, "F8_E4M3"), "fp8_e5m2": (torch.float8_e5m2, "F8_E5M2")}


def _header(path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp8")
    return d, {n: write_tiny(d / f"{n}.safetensors", arch, seed=s)
               for n, arch, s in (("a", "sd1", 1), ("b", "sd1", 2), ("xa", "sdxl", 1), ("xb", "sdxl", 2))}


@pytest.mark.parametrize("name", list(FP8))
@pytest.mark.parametrize("pair", [("a", "b"), ("xa", "xb")])
def test_unet_fp8_rest_fp16_rounded_from_float32(models, name, pair):
    d, m = models
    dtype, tag = FP8[name]
    base = Recipe(model_a=str(m[pair[0]]), model_b=str(m[pair[1]]), alpha=0.3, alpha_blocks="GRAD_V")
    f32, f8 = d / f"{pair[0]}-{name}-32.safetensors", d / f"{pair[0]}-{name}-8.safetensors"
    merge_to_file(base.replace(dtype="fp32"), str(f32), overwrite=True)
    report = merge_to_file(base.replace(dtype=name), str(f8), overwrite=True)
    assert report.warnings == []
    header, ref, got = _header(f8), load_file(str(f32)), load_file(str(f8))
    unet = [k for k in got if k.startswith("model.diffusion_model.")]
    assert unet and all(header[k]["dtype"] == tag for k in unet)
    for k, t in got.items():
        if k in unet:
            assert t.dtype == dtype
            assert torch.equal(t.view(torch.uint8), ref[k].to(dtype).view(torch.uint8)), k   # torch's RNE cast
        elif ref[k].dtype == torch.float32 and ("model" in k):
            assert t.dtype == torch.float16 and torch.equal(t, ref[k].to(torch.float16)), k
    others = {header[k]["dtype"] for k in got if k.startswith(("first_stage_model.", "cond_stage_model.",
                                                               "conditioner."))}
    assert "F16" in others and tag not in others


def test_fp8_inputs_read_as_float32_with_a_warning(models, tmp_path):
    d, m = models
    a8 = tmp_path / "a8.safetensors"
    merge_to_file(Recipe(model_a=str(m["a"]), model_b=str(m["b"]), alpha=0.0, dtype="fp8_e4m3fn"), str(a8))
    out = tmp_path / "m.safetensors"
    report = merge_to_file(Recipe(model_a=str(a8), model_b=str(m["b"]), alpha=0.25, dtype="fp32"), str(out))
    assert len(report.warnings) == 1 and "fp8" in report.warnings[0] and "float32" in report.warnings[0]
    a, b, got = load_file(str(a8)), load_file(str(m["b"])), load_file(str(out))
    k = "model.diffusion_model.middle_block.1.proj_in.weight"
    want = a[k].double() * 0.75 + b[k].double() * 0.25
    assert torch.allclose(got[k].double(), want, rtol=1e-6, atol=1e-7)
    with open_source(str(a8)) as src:                                  # the reader knows F8 names
        assert src.info(k).dtype == torch.float8_e4m3fn
        assert torch.equal(src.read(k).view(torch.uint8), a[k].view(torch.uint8))


def test_values_beyond_fp8_range_are_refused(models, tmp_path):
    d, m = models
    key = "model.diffusion_model.out.2.bias"

    def big(sd):
        sd[key] = sd[key].float() * 0 + 500.0
    a = write_tiny(tmp_path / "big.safetensors", "sd1", seed=1, dtype=torch.float32, edit=big)
    out = tmp_path / "o.safetensors"
    with pytest.raises(AlloyError, match=f"{key}.*too large"):
        merge_to_file(Recipe(model_a=str(a), model_b=str(m["b"]), alpha=0.0, dtype="fp8_e4m3fn"), str(out))
    assert not out.exists() and not list(tmp_path.glob(".o.safetensors*"))
    merge_to_file(Recipe(model_a=str(a), model_b=str(m["b"]), alpha=0.0, dtype="fp8_e5m2"), str(out))
    assert load_file(str(out))[key].float().max() == 512.0                 # e5m2 holds it (rounded)


def test_choices_everywhere():
    assert {"fp8_e4m3fn", "fp8_e5m2"} <= set(SAVE_DTYPES)
    assert Settings(save_dtype="fp8_e5m2").save_dtype == "fp8_e5m2"
    from merger.cli import build_parser
    a = build_parser().parse_args(["merge", "--model-a", "a", "--model-b", "b", "--dtype", "fp8_e4m3fn",
                                   "--out", "o.safetensors"])
    assert a.dtype == "fp8_e4m3fn"
    from merger.ui.fields import OUT_DTYPES
    assert {"fp8_e4m3fn", "fp8_e5m2"} <= set(OUT_DTYPES)


def test_api_fp8_save_and_random_tokens_with_a_bad_dice_field(tmp_path):
    from tests.webui_standin.harness import api_world
    w, s, c = api_world(tmp_path)
    r = c.post("/alloy/v1/merge", json={"recipe": {"model_a": "A.safetensors", "model_b": "B.safetensors",
                                                   "alpha_blocks": "R", "seed": 12},
                                        "target": "file", "name": "f8", "dtype": "fp8_e5m2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipe"]["dice"]["seed"] == 12 and body["recipe"]["dice"]["alpha"] == "R"
    assert body["recipe"]["alpha_blocks"].count(",") == 25
    header = _header(w.models / "f8.safetensors")
    assert {v["dtype"] for k, v in header.items() if k.startswith("model.diffusion_model.")} == {"F8_E5M2"}
    r = c.post("/alloy/v1/merge", json={"recipe": {"model_a": "A.safetensors", "model_b": "B.safetensors",
                                                   "alpha_blocks": "R", "dice": {"round": "x"}}})
    assert r.status_code == 400 and "round" in r.json()["detail"]


@pytest.mark.parametrize("dtype", ["fp16", "fp8_e4m3fn"])
def test_copied_keys_beyond_the_output_range_are_refused(models, tmp_path, dtype):
    """A key copied from A (absent from B) and narrowed on save is checked like merged keys."""
    d, m = models
    key = "model.diffusion_model.out.2.bias"

    def big(sd):
        sd[key] = sd[key].float() * 0 + 1e5

    def drop(sd):
        del sd[key]
    a = write_tiny(tmp_path / "big.safetensors", "sd1", seed=1, dtype=torch.float32, edit=big)
    b = write_tiny(tmp_path / "nokey.safetensors", "sd1", seed=2, dtype=torch.float32, edit=drop)
    out = tmp_path / "o.safetensors"
    with pytest.raises(AlloyError, match=f"{key}.*too large"):
        merge_to_file(Recipe(model_a=str(a), model_b=str(b), alpha=0.3, dtype=dtype), str(out))
    assert not out.exists()
    merge_to_file(Recipe(model_a=str(a), model_b=str(b), alpha=0.3, dtype="fp32"), str(out))
    assert load_file(str(out))[key].max() == 1e5                            # fp32 holds it: copied as is
