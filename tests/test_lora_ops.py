"""merge (concat exact, SVD = Eckart–Young), resize, metadata/hash, CLI — on small files."""
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from merger.errors import AlloyError
from merger.lora.blocks import LoraSpec
from merger.lora.cli import main as cli_main
from merger.lora.formats import load_lora
from merger.lora.linalg import module_delta
from merger.lora.merge import merge_loras
from merger.lora.output import addnet_hash
from merger.lora.resize import resize_lora
from merger.lora.synth import random_module

MODS = [("lora_unet_down_blocks_0_attentions_0_proj_in", 24, 16, None),
        ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_q", 20, 20, None),
        ("lora_unet_down_blocks_0_resnets_0_conv1", 12, 8, (3, 3)),
        ("lora_te_text_model_encoder_layers_0_mlp_fc1", 18, 10, None)]


def make(path, rank, alpha, seed, mods=MODS):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, o, i, k in mods:
        sd.update(random_module(name, o, i, rank, alpha, kernel=k, gen=g))
    save_file(sd, str(path), {"ss_network_module": "networks.lora"})
    return str(path)


def deltas(path):
    f = load_lora(path)
    return {n: module_delta(m, dtype=torch.float64) for n, m in f.modules.items()}


@pytest.fixture()
def two(tmp_path):
    return make(tmp_path / "big.safetensors", 4, 2.0, 1), make(tmp_path / "small.safetensors", 6, 6.0, 2)


def test_concat_is_exact_with_negative_ratios_and_different_ranks(two, tmp_path):
    a, b = two
    r = merge_loras([LoraSpec(a, 1.5), LoraSpec(b, -1.5)], str(tmp_path / "c.safetensors"), mode="concat",
                    dtype="fp32", device="cpu")
    da, db, dc = deltas(a), deltas(b), deltas(r.path)
    for n in da:
        want = 1.5 * da[n] - 1.5 * db[n]
        assert torch.allclose(dc[n], want, rtol=1e-5, atol=1e-6), n
        assert r.ranks[n] == 10
    assert r.overall_error == 0.0


def test_svd_error_equals_discarded_singular_values(two, tmp_path):
    a, b = two
    r = merge_loras([LoraSpec(a, 1.5), LoraSpec(b, -1.5)], str(tmp_path / "s.safetensors"), mode="svd",
                    rank=3, conv_rank=2, clamp_quantile=1, dtype="fp32", device="cpu")
    da, db, ds = deltas(a), deltas(b), deltas(r.path)
    num = den = 0.0
    for n in da:
        want = (1.5 * da[n] - 1.5 * db[n])
        w2 = want.reshape(want.shape[0], -1)
        s = torch.linalg.svdvals(w2)
        k = 2 if n.endswith("conv1") else 3
        assert r.ranks[n] == k
        best = math.sqrt(float((s[k:] ** 2).sum() / (s ** 2).sum()))
        got = float((ds[n] - want).norm() / want.norm())
        assert got == pytest.approx(best, rel=1e-4, abs=1e-6), n
        assert r.errors[n] == pytest.approx(best, rel=1e-4, abs=1e-6)
        num += float((s[k:] ** 2).sum())
        den += float((s ** 2).sum())
    assert r.overall_error == pytest.approx(math.sqrt(num / den), rel=1e-4)
    with safe_open(r.path, "pt") as f:
        md = f.metadata()
        keys = set(f.keys())
    assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight" in keys
    assert md["ss_network_module"] == "networks.lora" and md["ss_network_dim"] == "3"
    assert md["ss_network_alpha"] == "3"                      # svd_merge_lora prints f"{new_rank}"
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "2"}
    assert md["sshs_model_hash"] == addnet_hash(r.path)
    assert json.loads(md["alloy_lora_recipe"])["op"] == "merge"


def test_svd_with_rank_at_least_sum_is_exact(two, tmp_path):
    a, b = two
    r = merge_loras([LoraSpec(a, 1.0), LoraSpec(b, 0.5)], str(tmp_path / "s.safetensors"), mode="svd",
                    rank=64, clamp_quantile=1, dtype="fp32", device="cpu")
    assert r.overall_error < 1e-5


def test_block_weights_zero_a_block(two, tmp_path):
    a, _ = two
    blocks = ",".join(["1"] * 25 + ["0"])           # OUT11 = 0
    r = merge_loras([LoraSpec(a, 1.0, blocks)], str(tmp_path / "b.safetensors"), mode="concat", dtype="fp32", device="cpu")
    d = deltas(r.path)
    assert float(d["lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_q"].abs().max()) == 0.0
    assert torch.allclose(d["lora_unet_down_blocks_0_attentions_0_proj_in"],
                          deltas(a)["lora_unet_down_blocks_0_attentions_0_proj_in"], atol=1e-6)


def test_merge_refuses_mismatched_shapes(tmp_path):
    a = make(tmp_path / "a.safetensors", 2, 2, 1, MODS[:1])
    b = make(tmp_path / "b.safetensors", 2, 2, 1, [(MODS[0][0], 24, 17, None)])
    with pytest.raises(AlloyError, match="different shapes"):
        merge_loras([LoraSpec(a), LoraSpec(b)], str(tmp_path / "o.safetensors"), mode="concat")


def test_resize_fixed_and_dynamic(two, tmp_path):
    a, b = two
    c = merge_loras([LoraSpec(a, 1.5), LoraSpec(b, -1.5)], str(tmp_path / "c.safetensors"), mode="concat",
                    dtype="fp32", device="cpu").path
    dc = deltas(c)
    r = resize_lora(c, str(tmp_path / "r.safetensors"), dynamic="sv_fro", param=0.75, rank=4, verbose=True, device="cpu")
    dr = deltas(r.path)
    f = load_lora(r.path)
    for n, want in dc.items():
        s = torch.linalg.svdvals(want.reshape(want.shape[0], -1))
        cum = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
        k = int((cum < 0.75 ** 2).sum()) + 1
        assert r.ranks[n] == min(k + 1, 4)               # kohya: index + 1, capped by --rank
        rk = r.ranks[n]
        best = math.sqrt(float((s[rk:] ** 2).sum() / (s ** 2).sum()))
        assert float((dr[n] - want).norm() / want.norm()) == pytest.approx(best, rel=1e-4, abs=1e-6)
        m = f.modules[n]
        assert m.alpha == pytest.approx(1.0 * m.rank)    # concat had alpha = rank: scale 1 kept
    assert len(r.messages) == len(dc) and "fro retained" in r.messages[0]
    with safe_open(r.path, "pt") as fh:
        assert fh.metadata()["ss_network_dim"] == "Dynamic"
    r2 = resize_lora(a, str(tmp_path / "r2.safetensors"), rank=2, device="cpu")
    f2 = load_lora(r2.path)
    src = load_lora(a)
    for n, m in f2.modules.items():
        assert m.rank == 2 and m.scale == pytest.approx(src.modules[n].scale)
    with safe_open(r2.path, "pt") as fh:
        assert fh.metadata()["ss_network_dim"] == "2"


def test_resize_argument_errors(two, tmp_path):
    a, _ = two
    with pytest.raises(AlloyError, match="--rank N or --dynamic"):
        resize_lora(a, str(tmp_path / "x.safetensors"))
    with pytest.raises(AlloyError, match="fraction"):
        resize_lora(a, str(tmp_path / "x.safetensors"), dynamic="sv_fro", param=2.0)


def test_cli_exit_codes(two, tmp_path, capsys):
    a, b = two
    out = str(tmp_path / "m.safetensors")
    assert cli_main(["lora", "merge", "--lora", f"{a}:1.5", "--lora", f"{b}:-1.5", "--rank", "8", "--out", out,
                     "--device", "cpu"]) == 0
    assert cli_main(["lora", "merge", "--lora", f"{a}:1", "--concat", "--out", out]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli_main(["lora", "resize", "--lora", out, "--dynamic", "sv_fro", "--param", "0.75", "--rank", "4",
                     "--out", str(tmp_path / "r.safetensors"), "--verbose", "--device", "cpu"]) == 0
    assert cli_main(["lora", "inspect", out]) == 0
    text = capsys.readouterr().out
    assert "arch: sd1" in text and "ranks: 8×4" in text
    bad = tmp_path / "bad.safetensors"
    save_file({"x.lora_down.weight": torch.zeros(2, 3)}, str(bad))
    assert cli_main(["lora", "inspect", str(bad)]) == 2
    assert "only one of lora_down/lora_up" in capsys.readouterr().err
