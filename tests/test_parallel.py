"""smoothAdd runs keys in parallel worker processes; the file equals the sequential result."""
import pytest
import torch
from safetensors.torch import load_file

from merger import parallel
from merger.errors import AlloyError
from merger.filemerge import merge_to_file
from merger.recipe import Recipe
from tests.fixtures import write_tiny


def test_parallel_smooth_add_equals_sequential(tmp_path, monkeypatch):
    a, b, c = (write_tiny(tmp_path / f"{n}.safetensors", seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    r = Recipe(str(a), str(b), str(c), mode="add_difference", calc="smoothAdd", alpha=0.8,
               alpha_blocks="GRAD_A", adjust="1,0,0,0,0,0,0,0")
    seq = tmp_path / "seq.safetensors"
    merge_to_file(r, str(seq), device="cpu")
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(parallel, "worker_count", lambda: 2)
    par = tmp_path / "par.safetensors"
    rep = merge_to_file(r, str(par), device="cpu")
    assert par.read_bytes() == seq.read_bytes()
    assert rep.keys_merged > 1000

    def nan(sd):
        sd["model.diffusion_model.output_blocks.3.0.skip_connection.weight"].fill_(float("nan"))

    bad = write_tiny(tmp_path / "bad.safetensors", seed=2, edit=nan)
    out = tmp_path / "o.safetensors"
    with pytest.raises(AlloyError, match="skip_connection"):
        merge_to_file(r.replace(model_b=str(bad)), str(out), device="cpu")
    assert not out.exists()
