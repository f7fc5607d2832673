"""`diff`: per-block and per-component cosine / relative distance against an independent float64
formula, streaming (each key read once), edge cases, JSON shape, the CLI and the plot."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from merger import compare
from merger.arch import detect
from merger.cli import main
from merger.errors import AlloyError
from merger.io import open_source
from tests.fixtures import write_tiny


def _expected(path_a, path_b):
    """Concatenate every group's float tensors in float64 and apply the definitions directly."""
    sa, sb = load_file(str(path_a)), load_file(str(path_b))
    arch = detect(list(sa))
    groups: dict = {}
    for k, ta in sa.items():
        tb = sb.get(k)
        if tb is None or not ta.dtype.is_floating_point or ta.shape != tb.shape or arch.is_alias(k):
            continue
        for g in (arch.block_of(k), "c:" + compare.component_of(arch, k)):
            if g is not None:
                groups.setdefault(g, ([], []))
                groups[g][0].append(ta.double().reshape(-1))
                groups[g][1].append(tb.double().reshape(-1))
    out = {}
    for g, (xs, ys) in groups.items():
        a, b = torch.cat(xs), torch.cat(ys)
        cos = float(a @ b / (a.norm() * b.norm()))
        out[g] = (len(xs), cos, float((b - a).norm() / a.norm()))
    return arch, out


@pytest.mark.parametrize("arch_name,n_blocks", [("sd1", 26), ("sdxl", 20), ("flux", 61)])
def test_numbers_match_float64_formula(tmp_path, arch_name, n_blocks, monkeypatch):
    pa = write_tiny(tmp_path / "a.safetensors", arch_name, seed=1)
    pb = write_tiny(tmp_path / "b.safetensors", arch_name, seed=2, dtype=torch.float32)
    arch, want = _expected(pa, pb)
    for chunk in (compare.CHUNK, 5):                 # chunked accumulation gives the same sums
        monkeypatch.setattr(compare, "CHUNK", chunk)
        got = compare.compare_files(str(pa), str(pb))
        d = got.to_dict()
        assert d["arch"] == arch.name and [b["block"] for b in d["blocks"]] == list(arch.block_ids)
        assert len(d["blocks"]) == n_blocks
        for row in d["blocks"]:
            n, cos, dist = want.get(row["block"], (0, None, None))
            assert row["keys"] == n
            if n:
                assert row["cosine"] == pytest.approx(cos, rel=1e-12, abs=1e-14)
                assert row["rel_dist"] == pytest.approx(dist, rel=1e-12)
        for name, row in d["components"].items():
            n, cos, dist = want["c:" + name]
            assert (row["keys"], row["cosine"], row["rel_dist"]) == (n, pytest.approx(cos, rel=1e-12),
                                                                     pytest.approx(dist, rel=1e-12))
        assert set(d) == {"arch", "blocks", "components"}
        assert set(d["components"]) <= set(compare.COMPONENTS) and "unet" in d["components"]


def test_small_differences_keep_their_precision(tmp_path):
    """B = A + 1e-6·noise: rel_dist comes from ‖B − A‖² itself, not from aa + bb − 2ab."""
    sd = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.randn(64, 64, dtype=torch.float64),
          "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.randn(64, dtype=torch.float64)}
    noise = {k: v + 1e-6 * torch.randn_like(v) for k, v in sd.items()}
    save_file(sd, str(tmp_path / "a.safetensors"))
    save_file(noise, str(tmp_path / "b.safetensors"))
    got = compare.compare_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
    k = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    want = float((noise[k] - sd[k]).norm() / sd[k].norm())
    assert got.blocks["IN01"].rel_dist == pytest.approx(want, rel=1e-9)


def test_identical_and_zero_edge_cases():
    s = compare.Sums(keys=1, ab=4.0, aa=4.0, bb=4.0, dd=0.0)
    assert (s.cosine, s.rel_dist) == (1.0, 0.0)
    zero_a = compare.Sums(keys=1, ab=0.0, aa=0.0, bb=2.0, dd=2.0)
    assert (zero_a.cosine, zero_a.rel_dist) == (None, None)
    both_zero = compare.Sums(keys=1)
    assert (both_zero.cosine, both_zero.rel_dist) == (None, 0.0)
    assert compare.Sums().as_dict() == {"keys": 0, "cosine": None, "rel_dist": None}
    pa, pb = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])
    s = compare.pair_sums(pa, pb)
    assert (s.cosine, s.rel_dist) == (-1.0, 2.0)


def test_each_key_read_once_and_notes(tmp_path):
    def edit(sd):
        sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(6, 9, 3, 3).half()   # inpainting A
        sd["only.in.a"] = torch.ones(2)
    pa = write_tiny(tmp_path / "a.safetensors", "sd1", seed=1, edit=edit)
    pb = write_tiny(tmp_path / "b.safetensors", "sd1", seed=2)
    reads: dict = {}
    sa, sb = open_source(str(pa), "model A"), open_source(str(pb), "model B")
    for src in (sa, sb):
        orig = src.read

        def read(key, *a, _orig=orig, _label=src.label, **kw):
            reads[(_label, key)] = reads.get((_label, key), 0) + 1
            return _orig(key, *a, **kw)
        src.read = read
    calls = []
    got = compare.compare_sources(sa, sb, progress=lambda d, t, k: calls.append((d, t)))
    assert reads and set(reads.values()) == {1}
    assert calls[-1][0] == calls[-1][1] == len(reads) // 2
    assert got.only_a == 1 and got.only_b == 0
    assert got.mismatched == ["model.diffusion_model.input_blocks.0.0.weight"]
    assert any("differ in shape" in n for n in got.notes())


def test_fp8_inputs_are_compared_as_their_values(tmp_path):
    def to_fp8(sd):
        for k, v in sd.items():
            if k.startswith("model.diffusion_model."):
                sd[k] = v.to(torch.float8_e4m3fn)
    pa = write_tiny(tmp_path / "a.safetensors", "sd1", seed=1, dtype=torch.float32, edit=to_fp8)
    pb = write_tiny(tmp_path / "b.safetensors", "sd1", seed=1, dtype=torch.float32)
    _, want = _expected(pa, pb)
    got = compare.compare_files(str(pa), str(pb))
    assert 0 < got.blocks["M00"].rel_dist < 0.1
    assert got.blocks["M00"].rel_dist == pytest.approx(want["M00"][2], rel=1e-12)
    assert got.components["vae"].rel_dist == 0.0 and got.components["vae"].cosine == pytest.approx(1.0)


def test_different_architectures_refused(tmp_path):
    pa = write_tiny(tmp_path / "a.safetensors", "sd1", seed=1)
    pb = write_tiny(tmp_path / "b.safetensors", "sdxl", seed=2)
    with pytest.raises(AlloyError, match="different architectures"):
        compare.compare_files(str(pa), str(pb))


def test_cli_json_text_and_plot(tmp_path, capsys):
    pa = write_tiny(tmp_path / "a.safetensors", "sd1", seed=1)
    pb = write_tiny(tmp_path / "b.safetensors", "sd1", seed=2)
    plot = tmp_path / "d.png"
    assert main(["diff", str(pa), str(pb), "--json", "--quiet", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["blocks"][0]["block"] == "BASE" and len(out["blocks"]) == 26
    assert math.isfinite(out["components"]["unet"]["cosine"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    assert Image.open(plot).size[0] >= 600
    assert main(["diff", str(pa), str(pb), "--quiet", "--plot", str(plot)]) == 2      # no silent overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["diff", str(pa), str(pb), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "OUT11" in text and "UNet" in text and "cosine" in text
    assert main(["diff", str(pa), str(tmp_path / "missing.safetensors"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bare_transformer_file_matches_the_prefixed_one(tmp_path):
    full = write_tiny(tmp_path / "full.safetensors", "flux", seed=1)
    bare = write_tiny(tmp_path / "bare.safetensors", "flux", seed=2, bare=True)
    got = compare.compare_files(str(full), str(bare))
    assert got.components["unet"].keys > 0 and got.blocks["D00"].keys > 0
    assert got.only_b == 0
    assert got.only_a == sum(1 for k in load_file(str(full)) if not k.startswith("model.diffusion_model."))
