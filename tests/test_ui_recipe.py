"""Loading recipes into the tab from PNG text and checkpoint metadata."""
from __future__ import annotations

import base64
import io
import json

import pytest

gr = pytest.importorskip("gradio")
from PIL import Image, PngImagePlugin  # noqa: E402

from tests.ui_fixtures import write_tiny_sd1  # noqa: E402

from merger.errors import AlloyError  # noqa: E402
from merger.history import History  # noqa: E402
from merger.recipe import Recipe  # noqa: E402
from merger.ui import recipe_sources as rs  # noqa: E402
from merger.ui.context import TabContext  # noqa: E402
from merger.ui.recipe_panel import on_load_png  # noqa: E402

RECIPE = Recipe(model_a="/m/a.safetensors", model_b="/m/b.safetensors", alpha=0.35, alpha_blocks="GRAD_A",
                calc="cosineA")


def _infotext(extra: str) -> str:
    return ("a cat\nNegative prompt: dog\nSteps: 2, Sampler: Euler, Seed: 1, Model: merged, " + extra
            + ", Version: v1.10.1")


def _png(text: dict) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_webui_infotext_field():
    # the WebUI quotes a value holding commas with json.dumps (merger/webui.py writes compact JSON)
    value = json.dumps(json.dumps(RECIPE.to_dict(), separators=(",", ":")))
    got = rs.recipe_from_png_info({"parameters": _infotext(f"Alloy merge: x, Alloy recipe: {value}")})
    assert got == RECIPE


def test_whole_recipe_json_in_parameters_and_own_chunk():
    assert rs.recipe_from_png_info({"parameters": "prompt\n" + RECIPE.to_json()}) == RECIPE
    assert rs.recipe_from_png_info({"Alloy recipe": RECIPE.to_json()}) == RECIPE


def test_hash_only_is_found_in_history(tmp_path):
    history = History(str(tmp_path))
    history.append("live", RECIPE.to_dict())
    text = _infotext(f"Alloy hash: {RECIPE.short_hash()}")
    assert rs.recipe_from_png_info({"parameters": text}, history) == RECIPE
    with pytest.raises(AlloyError, match="not in the merge history"):
        rs.recipe_from_png_info({"parameters": _infotext("Alloy hash: 0123456789")}, history)


def test_image_without_recipe_is_a_sentence():
    with pytest.raises(AlloyError, match="holds no Alloy recipe"):
        rs.recipe_from_png_info({"parameters": _infotext("Lora hashes: \"x: 1\"")})


def test_png_upload_through_gradio_keeps_text(tmp_path):
    """gr.Image(type="pil") as the tab uses it hands the PNG text chunks to the handler."""
    value = json.dumps(json.dumps(RECIPE.to_dict(), separators=(",", ":")))
    data = _png({"parameters": _infotext(f"Alloy recipe: {value}")})
    image = gr.Image(type="pil", source="upload").preprocess(
        "data:image/png;base64," + base64.b64encode(data).decode())

    from merger.host import Host

    class ListHost(Host):
        def list_models(self):
            return ["a.safetensors", "b.safetensors"]

    class S:
        host = ListHost()
        data_dir = None
        history = None

    out = on_load_png(TabContext(S(), live=False), {"png_image": image, "arch": "sd1", "blocks_target": "alpha"})
    assert out["model_a"] == "a.safetensors" and out["alpha"] == 0.35
    assert out["alpha_blocks"] == "GRAD_A" and out["calc"]["value"] == "cosineA"
    assert "from the image" in out["status"]


def test_checkpoint_a1111_metadata_fallback(tmp_path):
    md = {"sd_merge_recipe": json.dumps({"type": "webui", "primary_model_hash": "aa", "secondary_model_hash": "bb",
                                         "tertiary_model_hash": "cc", "interp_method": "Add difference",
                                         "multiplier": 0.4, "save_as_half": True}),
          "sd_merge_models": json.dumps({"aa": {"name": "one.safetensors"}, "bb": {"name": "two.ckpt"},
                                         "cc": {"name": "three.safetensors"}})}
    path = write_tiny_sd1(tmp_path / "m.safetensors", 1, metadata=md)
    r = rs.recipe_from_checkpoint(str(path))
    assert (r.model_a, r.model_b, r.model_c) == ("one.safetensors", "two.ckpt", "three.safetensors")
    assert r.mode == "add_difference" and r.alpha == 0.4 and r.dtype == "fp16"


def test_checkpoint_alloy_metadata_preferred(tmp_path):
    path = write_tiny_sd1(tmp_path / "m.safetensors", 1, metadata={"alloy_recipe": RECIPE.to_json(indent=None)})
    assert rs.recipe_from_checkpoint(str(path)) == RECIPE
