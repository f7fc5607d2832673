"""Live in-place merging into an SDXL-layout module tree (`conditioner.embedders.N.*` names) and an
fp16 model: only merged parameters change, in place, and restore is bit-exact."""
import torch
from safetensors.torch import load_file

from merger.recipe import Recipe
from merger.session import Session, StandaloneHost
from merger.settings import Settings
from tests.webui_standin import tinysd
from tests.webui_standin.harness import same_bits


class LiveHost(StandaloneHost):
    """A models folder plus one loaded model (what the WebUI adapter gives the session)."""

    def __init__(self, models_dir, model, path):
        super().__init__(models_dir)
        self.model, self.path = model, path

    def live_model(self):
        return self.model

    def loaded_model_path(self):
        return self.path


def _world(tmp_path, dtype):
    entries = tinysd.small_layout("sdxl", every=3)
    paths = {s: tinysd.write_checkpoint(tmp_path / f"{s}.safetensors", seed, torch.float16, entries)
             for s, seed in (("a", 1), ("b", 2))}
    model = tinysd.build_model(entries, dtype=dtype)
    model.load_state_dict(load_file(paths["a"]), strict=False)
    return paths, model


def _bits(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sdxl_live_merge_and_exact_restore(tmp_path):
    for dtype in (torch.float16, torch.float32):
        folder = tmp_path / str(dtype).split(".")[-1]
        folder.mkdir()
        paths, model = _world(folder, dtype)
        session = Session(LiveHost(str(folder), model, paths["a"]), str(tmp_path / "data"), Settings(cache_gb=1))
        before = _bits(model)
        ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
        te = "conditioner.embedders.1.model.ln_final.weight"
        unet = next(k for k in before if k.startswith("model.diffusion_model.middle_block."))
        for alpha in (0.3, 0.9, 0.3):
            values = ",".join(["0.25"] + [str(alpha)] * 19)
            rep = session.merge_live(Recipe(paths["a"], paths["b"], alpha_blocks=values))
            assert rep.keys_merged > 0
            now = _bits(model)
            A, B = load_file(paths["a"]), load_file(paths["b"])
            for key, t in ((te, 0.25), (unet, alpha)):
                want = (A[key].double() * (1 - t) + B[key].double() * t).to(dtype)
                assert torch.allclose(now[key].double(), want.double(), atol=2e-3), key
            assert {k: v.data_ptr() for k, v in model.state_dict().items()} == ptrs  # in place
        session.restore()
        after = _bits(model)
        assert not [k for k in before if not same_bits(before[k], after[k])]
