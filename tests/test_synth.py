"""The project's own layouts and synthetic checkpoint writer (merger.layouts, merger.synth)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merger import layouts, synth
from merger.arch import detect
from merger.errors import AlloyError
from merger.io import open_source

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch,count", [("sd1", 1143), ("sd2", 1240), ("sdxl", 2515), ("flux", 1439)])
def test_default_files_have_the_real_key_counts(arch, count):
    assert len(synth.entries(arch)) == count


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl", "flux"])
def test_layouts_are_detected_as_their_architecture(arch):
    assert detect(layouts.keys(arch)).name == arch


def test_sd3_layout_is_refused_like_a_real_sd3_file():
    with pytest.raises(AlloyError):
        detect(layouts.keys("sd3"))


def test_sd2_differs_from_sd1_where_sd2_does():
    sd1, sd2 = layouts.shapes("sd1"), layouts.shapes("sd2")
    k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert sd1[k] == (320, 768) and sd2[k] == (320, 1024)
    p = "model.diffusion_model.output_blocks.11.1.proj_out.weight"
    assert sd1[p] == (320, 320, 1, 1) and sd2[p] == (320, 320)
    assert sd2["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert not any(k.startswith("cond_stage_model.transformer.") for k in sd2)


def test_flux_bare_file_uses_the_alias_names():
    bare = layouts.keys("flux", bare=True)
    assert bare and not any(k.startswith("model.diffusion_model.") for k in bare)
    assert len(bare) == sum(1 for r in layouts.rows("flux") if r.component == "diffuser")


def test_tiny_file_is_seeded_reproducible_and_small(tmp_path):
    a = synth.write(tmp_path / "a.safetensors", "sd1", seed=1, tiny=8)
    b = synth.write(tmp_path / "b.safetensors", "sd1", seed=1, tiny=8)
    c = synth.write(tmp_path / "c.safetensors", "sd1", seed=2, tiny=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert a.stat().st_size < 4 * 2**20
    src = open_source(str(a))
    assert detect(src.keys()).name == "sd1" and len(src.keys()) == 1143
    assert synth.matches(a, "sd1", seed=1, tiny=8)
    assert not synth.matches(a, "sd1", seed=2, tiny=8)
    assert not synth.matches(a, "sd1", seed=1, tiny=4)
    assert not synth.matches(tmp_path / "missing.safetensors", "sd1", seed=1)


def test_values_of_a_key_do_not_depend_on_the_other_keys(tmp_path):
    whole = load_file(str(synth.write(tmp_path / "w.safetensors", "sd1", seed=3, tiny=4)))
    part = load_file(str(synth.write(tmp_path / "p.safetensors", "sd1", seed=3, tiny=4, components=["vae"])))
    assert part and all(torch.equal(whole[k], v) for k, v in part.items())


def test_value_model(tmp_path):
    sd = load_file(str(synth.write(tmp_path / "v.safetensors", "sd1", seed=5, dtype="fp32", tiny=64)))
    ids = sd["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64 and ids.tolist() == [list(range(77))]
    assert sd["alphas_cumprod"].shape == (1000,) and 0 < float(sd["alphas_cumprod"][-1]) < float(sd["alphas_cumprod"][0]) < 1
    norm = sd["model.diffusion_model.out.0.weight"]
    assert abs(float(norm.mean()) - 1.0) < 0.05
    w = sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"].float()    # fan-in 64·1·1 after tiny
    assert 0.5 < float(w.std() * 64 ** 0.5) < 1.5


def test_bad_arguments_are_one_sentence():
    with pytest.raises(AlloyError, match="Unknown layout"):
        synth.entries("sd9")
    with pytest.raises(AlloyError, match="precision"):
        synth.entries("sd1", dtype="fp12")


def test_nothing_in_the_repository_reads_beside_the_checkout():
    """The repository is complete in itself: no code, test, benchmark or script reads the shared
    reference folder beside the checkout."""
    beside = re.escape("..") + "/" + "shared"          # the folder's relative name, spelt so this file has no such path
    pattern = re.compile(beside + r"|parents?\[\d\]\s*/\s*[\"']shared[\"']|parent\s*/\s*[\"']shared[\"']")
    hits = []
    for path in REPO.rglob("*"):
        if any(part in (".git", ".venv", "__pycache__", "demo") for part in path.parts) or not path.is_file():
            continue
        if path.suffix in (".py", ".sh", ".toml", ".txt", ".ini", ".cfg") or path.name in ("Makefile", "run"):
            if path.resolve() == Path(__file__).resolve():
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert hits == []
