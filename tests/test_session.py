"""Session without a live model (standalone host), history and settings."""
import pytest

from tests.webui_standin import tinysd


def test_standalone_file_merge_and_history(tmp_path):
    from merger.errors import AlloyError
    from merger.recipe import Recipe
    from merger.session import Session, StandaloneHost
    from merger.settings import Settings
    for s, seed in (("A", 1), ("B", 2)):
        tinysd.write_checkpoint(tmp_path / f"{s}.safetensors", seed)
    s = Session(StandaloneHost(str(tmp_path)), str(tmp_path / "data"), Settings(history_max=2))
    assert s.host.list_models() == ["A.safetensors", "B.safetensors"]
    r = Recipe(model_a="A", model_b="B.safetensors", alpha=0.3)
    with pytest.raises(AlloyError, match="No model is loaded"):
        s.merge_live(r)
    rep = s.merge_to_file(r, "out")
    assert rep.path.endswith("out.safetensors") and (tmp_path / "out.safetensors").exists()
    for i in range(5):
        s.merge_to_file(r.replace(alpha=i / 10), f"o{i}")
    entries = s.history.entries()
    assert len(entries) <= 4 and entries[0]["recipe"]["alpha"] == 0.4
    assert s.xyz_base().alpha == 0.4
    with pytest.raises(AlloyError, match="no live merge"):
        s.save_live("x")
    with pytest.raises(AlloyError, match="not found"):
        s.resolve(Recipe(model_a="nope", model_b="B"))
    st = s.status()
    assert st["merged"] is False and st["busy"] is False


def test_settings_validation_and_getter():
    from merger.errors import AlloyError
    from merger.settings import Settings, from_getter
    with pytest.raises(AlloyError):
        Settings(cache_gb=-1)
    with pytest.raises(AlloyError):
        Settings(compute_device="tpu")
    got = from_getter({"alloy_cache_gb": "2", "alloy_save_dtype": "bogus"}.get)
    assert got.cache_gb == 2.0 and got.save_dtype == "fp16" and got.cache_bytes == 2 << 30
