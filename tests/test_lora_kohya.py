"""kohya sd-scripts compatibility: files in the forms kohya's scripts write load everywhere; the SVD
merge clamps like svd_merge_lora; resize picks kohya's ranks (float64 reference of resize_lora's
rules); concat --kohya-alpha is merge_lora.py --concat; metadata like kohya's, with no paths."""
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from merger.lora.bake import bake
from merger.lora.blocks import LoraSpec
from merger.lora.extract import extract
from merger.lora.formats import load_lora
from merger.lora.info import describe
from merger.lora.linalg import flat, module_delta
from merger.lora.merge import merge_loras
from merger.lora.resize import resize_lora
from merger.ui.lora_panel import make_resolver, run_op

U = "model.diffusion_model."
CKPT = {U + "input_blocks.1.1.proj_in.weight": (24, 16, 1, 1),
        U + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (20, 20),
        U + "input_blocks.1.0.in_layers.2.weight": (12, 8, 3, 3),
        "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight": (18, 10),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": (1, 77)}
MODS = [("lora_unet_down_blocks_0_attentions_0_proj_in", 24, 16, (1, 1)),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 20, 20, None),
        ("lora_unet_down_blocks_0_resnets_0_conv1", 12, 8, (3, 3)),
        ("lora_te_text_model_encoder_layers_0_mlp_fc1", 18, 10, None)]
MODELSPEC = {"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": "stable-diffusion-v1/lora",
             "modelspec.implementation": "diffusers", "modelspec.title": "slider", "modelspec.resolution": "512x512",
             "modelspec.date": "2026-11-30T00:00:00", "modelspec.prediction_type": "epsilon",
             "modelspec.merged_from": "big, small", "modelspec.implementation_version": "sd-scripts/0123abc"}


def kohya_file(path, rank, *, factor_dtype, alpha, seed=0, metadata=None):
    """A LoRA as kohya's scripts save it. `alpha`: "int0d" (svd_merge_lora / merge_lora:
    `torch.tensor(rank)`), "int1" (one-element int64), "float" (trainer / extract / resize:
    alpha buffer in the save dtype), "none" (no alpha: scale 1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, o, i, k in MODS:
        kk = () if k is None else k
        down = torch.randn(rank, i, *kk, generator=g) / math.sqrt(i)
        up = torch.randn(o, rank, *((1, 1) if k else ()), generator=g)
        sd[f"{name}.lora_down.weight"] = down.to(factor_dtype).contiguous()
        sd[f"{name}.lora_up.weight"] = up.to(factor_dtype).contiguous()
        if alpha == "int0d":
            sd[f"{name}.alpha"] = torch.tensor(rank)
        elif alpha == "int1":
            sd[f"{name}.alpha"] = torch.tensor([rank // 2], dtype=torch.int64)
        elif alpha == "float":
            sd[f"{name}.alpha"] = torch.tensor(rank / 2).to(factor_dtype)
    md = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
          "ss_network_args": json.dumps({"conv_dim": rank, "conv_alpha": rank}), "ss_v2": "False",
          "ss_base_model_version": "sd_v1", "sshs_model_hash": "0" * 64, "sshs_legacy_hash": "00000000",
          **MODELSPEC, **(metadata or {})}
    save_file(sd, str(path), md)
    return str(path), sd


def want_delta(sd, name, ratio=1.0):
    """ΔW from the raw tensors, float64: (alpha/rank)·up@down (flattened)."""
    down, up = sd[f"{name}.lora_down.weight"].double(), sd[f"{name}.lora_up.weight"].double()
    a = sd.get(f"{name}.alpha")
    scale = 1.0 if a is None else float(a.double().reshape(())) / down.shape[0]
    return ratio * scale * (flat(up) @ flat(down))


FORMS = [(torch.float32, "int0d"), (torch.float16, "int0d"), (torch.bfloat16, "int0d"),
         (torch.float32, "int1"), (torch.float16, "float"), (torch.bfloat16, "float"), (torch.float32, "none")]


@pytest.mark.parametrize("factor_dtype,alpha", FORMS)
def test_every_kohya_form_loads_in_every_tool(tmp_path, factor_dtype, alpha):
    path, sd = kohya_file(tmp_path / "k.safetensors", 4, factor_dtype=factor_dtype, alpha=alpha)
    d = describe(path)
    assert d["modules"] == 4 and d["arch"] == "sd1" and d["ranks"] == {"4": 4}
    f = load_lora(path)
    for name, *_ in MODS:
        got = module_delta(f.modules[name], dtype=torch.float64)
        assert torch.allclose(got.reshape(got.shape[0], -1), want_delta(sd, name), rtol=1e-6, atol=1e-9)
    c = merge_loras([LoraSpec(path, 0.5)], str(tmp_path / "c.safetensors"), mode="concat", dtype="fp32", device="cpu")
    fc = load_lora(c.path)
    for name, *_ in MODS:
        got = module_delta(fc.modules[name], dtype=torch.float64)
        assert torch.allclose(got.reshape(got.shape[0], -1), want_delta(sd, name, 0.5), rtol=1e-5, atol=1e-7)
    s = merge_loras([LoraSpec(path, 1.0)], str(tmp_path / "s.safetensors"), rank=2, device="cpu")
    assert set(s.ranks.values()) == {2}
    r = resize_lora(path, str(tmp_path / "r.safetensors"), rank=2, device="cpu")
    assert load_lora(r.path).modules[MODS[0][0]].rank == 2
    model = tmp_path / "m.safetensors"
    save_file({k: (torch.arange(77).reshape(s) if "position" in k else torch.zeros(s)) for k, s in CKPT.items()},
              str(model))
    b = bake(str(model), [LoraSpec(path, 1.0)], str(tmp_path / "b.safetensors"), dtype="fp32", device="cpu",
             hash_inputs=False)
    assert not b.unmatched
    with safe_open(b.path, "pt") as fb:
        w = fb.get_tensor(U + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight").double()
    assert torch.allclose(w, want_delta(sd, MODS[1][0]), rtol=1e-5, atol=1e-6)
    status, _ = run_op("merge", {"loras": "k.safetensors:1", "mode": "svd", "rank": 2, "out": "ui", "device": "cpu"},
                       make_resolver(None, str(tmp_path)))
    assert status.startswith("merge: 4 modules"), status


def kohya_svd_merge_ref(deltas, k, q, signs_like):
    """svd_merge_lora.py in float64: SVD of ΔW, up = U·S, down = Vh (first k), h = quantile of
    cat(up, down) (signed values), both clamped to ±h. Components take the signs of `signs_like`
    (Alloy's factors), since the quantile of signed values depends on the SVD's sign choice."""
    Uf, S, Vh = torch.linalg.svd(deltas, full_matrices=False)
    up, down = Uf[:, :k] * S[:k], Vh[:k]
    sign = torch.sign((up * signs_like.double()).sum(0))
    up, down = up * sign, down * sign[:, None]
    h = torch.quantile(torch.cat([up.flatten(), down.flatten()]), q)
    return up.clamp(-h, h), down.clamp(-h, h)


def test_svd_merge_clamps_like_svd_merge_lora_by_default(tmp_path):
    a, sa = kohya_file(tmp_path / "a.safetensors", 4, factor_dtype=torch.float32, alpha="float", seed=1)
    b, sb = kohya_file(tmp_path / "b.safetensors", 6, factor_dtype=torch.float32, alpha="int0d", seed=2)
    r = merge_loras([LoraSpec(a, 1.5), LoraSpec(b, -1.5)], str(tmp_path / "m.safetensors"), rank=3, dtype="fp32",
                    device="cpu")
    f = load_lora(r.path)
    with safe_open(r.path, "pt") as fh:
        raw = {k: fh.get_tensor(k) for k in fh.keys()}
    clamped_somewhere = False
    for name, *_ in MODS:
        delta = want_delta(sa, name, 1.5) + want_delta(sb, name, -1.5)
        up, down = flat(raw[f"{name}.lora_up.weight"]), flat(raw[f"{name}.lora_down.weight"])
        ref_up, ref_down = kohya_svd_merge_ref(delta, 3, 0.99, up)
        assert torch.allclose(up.double(), ref_up, rtol=1e-4, atol=1e-5), name
        assert torch.allclose(down.double(), ref_down, rtol=1e-4, atol=1e-5), name
        h = float(ref_up.abs().max())
        clamped_somewhere |= bool((up.abs() >= h * (1 - 1e-6)).sum() > 1)
        assert f.modules[name].alpha == 3.0
        err = float((ref_up @ ref_down - delta).norm() / delta.norm())
        assert r.errors[name] == pytest.approx(err, rel=1e-3)
    assert clamped_somewhere
    exact = merge_loras([LoraSpec(a, 1.5), LoraSpec(b, -1.5)], str(tmp_path / "e.safetensors"), rank=3,
                        clamp_quantile=1, dtype="fp32", device="cpu")
    assert exact.overall_error < r.overall_error


def kohya_rank_ref(delta, method, param, max_rank):
    """resize_lora.py's rank rule in float64 on the full ΔW spectrum (len = min(out, in·k·k))."""
    S = torch.linalg.svdvals(delta)
    n = len(S)
    if method == "sv_ratio":
        idx = int((S > S[0] / param).sum())
    elif method == "sv_cumulative":
        idx = int(torch.searchsorted(torch.cumsum(S, 0) / S.sum(), torch.tensor(param, dtype=S.dtype))) + 1
    elif method == "sv_fro":
        c = torch.cumsum(S ** 2, 0) / (S ** 2).sum()
        idx = int(torch.searchsorted(c, torch.tensor(param ** 2, dtype=S.dtype))) + 1
    r = max_rank if method is None else max(1, min(idx, n - 1)) + 1
    if S[0] <= 1e-6:
        return 1
    return min(r, max_rank)


SPECTRA = {"geometric": lambda r: [0.6 ** i for i in range(r)], "flat": lambda r: [1.0] * r,
           "two-level": lambda r: [5.0] * (r // 2) + [0.5] * (r - r // 2), "rank1": lambda r: [2.0],
           "power": lambda r: [(i + 1) ** -1.0 for i in range(r)]}


def spectrum_lora(path, spectra_ranks, conv_name=None):
    """A LoRA whose modules have ΔW = (alpha/r)·up·down with known singular values σ·alpha/r."""
    g = torch.Generator().manual_seed(5)
    sd = {}
    shapes = [("lora_unet_m%d_to_q" % i, 10, 14) for i in range(len(spectra_ranks))]
    for (name, o, i), (spec, r) in zip(shapes, spectra_ranks):
        s = torch.tensor(SPECTRA[spec](r), dtype=torch.float64)
        r = len(s)
        uq = torch.linalg.qr(torch.randn(o, r, generator=g, dtype=torch.float64)).Q
        vq = torch.linalg.qr(torch.randn(i, r, generator=g, dtype=torch.float64)).Q
        sd[f"{name}.lora_up.weight"] = (uq * s).float().contiguous()
        sd[f"{name}.lora_down.weight"] = vq.T.contiguous().float()
        sd[f"{name}.alpha"] = torch.tensor(r / 2.0)
    save_file(sd, str(path))
    return str(path), sd


CASES = [("geometric", 8), ("flat", 6), ("two-level", 8), ("rank1", 1), ("power", 10), ("geometric", 10),
         ("flat", 10), ("power", 3)]          # rank 10 = min(out, in): full-rank modules


@pytest.mark.parametrize("method,param,max_rank", [
    ("sv_fro", 0.5, 16), ("sv_fro", 0.9, 16), ("sv_fro", 0.99, 16), ("sv_fro", 0.99, 4),
    ("sv_ratio", 2.0, 16), ("sv_ratio", 10.0, 16), ("sv_ratio", 1000.0, 16),
    ("sv_cumulative", 0.5, 16), ("sv_cumulative", 0.9, 16), ("sv_cumulative", 0.999, 8), (None, None, 4)])
def test_resize_ranks_are_kohyas_capped_at_the_input_rank(tmp_path, method, param, max_rank):
    path, sd = spectrum_lora(tmp_path / "s.safetensors", CASES)
    r = resize_lora(path, str(tmp_path / "r.safetensors"), rank=max_rank, dynamic=method, param=param,
                    dtype="fp32", device="cpu")
    f = load_lora(r.path)
    for name in {k.split(".")[0] for k in sd}:
        delta = flat(sd[f"{name}.lora_up.weight"]).double() @ sd[f"{name}.lora_down.weight"].double()
        in_rank = sd[f"{name}.lora_down.weight"].shape[0]
        want = min(kohya_rank_ref(delta, method, param, max_rank), in_rank)
        assert r.ranks[name] == want, (name, method, param)
        assert f.modules[name].alpha == pytest.approx(0.5 * want)          # scale alpha/rank kept (1/2)


def test_resize_conv_rank_comment_and_metadata(tmp_path):
    path, _ = kohya_file(tmp_path / "k.safetensors", 6, factor_dtype=torch.float16, alpha="float",
                         metadata={"ss_training_comment": "my slider"})
    r = resize_lora(path, str(tmp_path / "r.safetensors"), rank=4, conv_rank=2, device="cpu")
    assert r.ranks["lora_unet_down_blocks_0_resnets_0_conv1"] == 2
    assert r.ranks["lora_unet_down_blocks_0_attentions_0_proj_in"] == 4           # 1×1 conv: --rank
    with safe_open(r.path, "pt") as fh:
        md = fh.metadata()
    assert md["ss_training_comment"] == "dimension is resized from 6 to 4 (conv: 2); my slider"
    assert md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "2.0"       # kohya prints float alphas
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}
    assert md["modelspec.title"] == "slider"                                     # input's own metadata kept
    d = resize_lora(path, str(tmp_path / "d.safetensors"), dynamic="sv_fro", param=0.9, device="cpu")
    with safe_open(d.path, "pt") as fh:
        assert fh.metadata()["ss_training_comment"] == "Dynamic resize with sv_fro: 0.9 from 6; my slider"


def test_concat_kohya_alpha_is_merge_lora_concat(tmp_path):
    a, sa = kohya_file(tmp_path / "a.safetensors", 4, factor_dtype=torch.float16, alpha="float", seed=1)
    b, sb = kohya_file(tmp_path / "b.safetensors", 6, factor_dtype=torch.float32, alpha="int0d", seed=2)
    r = merge_loras([LoraSpec(a, 1.5), LoraSpec(b, -0.5)], str(tmp_path / "k.safetensors"), mode="concat",
                    kohya_alpha=True, dtype="fp32", device="cpu")
    f = load_lora(r.path)
    for name, *_ in MODS:
        a1, a2 = 2.0, 6.0                          # alphas: rank/2 (float form), rank (int form)
        want = (a1 / 10) * 1.5 * 1.5 * want_delta(sa, name) / (a1 / 4) \
            + (a2 / 10) * -0.5 * 0.5 * want_delta(sb, name) / (a2 / 6)
        got = module_delta(f.modules[name], dtype=torch.float64)
        assert torch.allclose(got.reshape(got.shape[0], -1), want, rtol=1e-5, atol=1e-6), name
        assert f.modules[name].alpha == a1 and f.modules[name].rank == 10
    with safe_open(r.path, "pt") as fh:
        md = fh.metadata()
    assert md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "2.0"    # the first LoRA's, as kohya


def test_metadata_names_files_never_folders(tmp_path):
    secret = tmp_path / "SECRET_FOLDER_x7"
    secret.mkdir()
    a, _ = kohya_file(secret / "a.safetensors", 4, factor_dtype=torch.float32, alpha="float", seed=1,
                      metadata={"ss_training_comment": "trained"})
    base = secret / "base.safetensors"
    tuned = secret / "tuned.safetensors"
    g = torch.Generator().manual_seed(0)
    sdb = {k: (torch.arange(77).reshape(s) if "position" in k else torch.randn(*s, generator=g)) for k, s in CKPT.items()}
    save_file(sdb, str(base))
    save_file({k: (v if "position" in k else v + 0.1 * torch.randn(v.shape, generator=g)) for k, v in sdb.items()},
              str(tuned))
    outs = [merge_loras([LoraSpec(a, 1.0)], str(tmp_path / "m.safetensors"), rank=2, device="cpu"),
            merge_loras([LoraSpec(a, 1.0)], str(tmp_path / "c.safetensors"), mode="concat", device="cpu"),
            resize_lora(a, str(tmp_path / "r.safetensors"), rank=2, device="cpu"),
            resize_lora(a, str(tmp_path / "d.safetensors"), dynamic="sv_ratio", param=4, device="cpu"),
            extract(str(tuned), str(base), str(tmp_path / "x.safetensors"), rank=4, conv_rank=2, device="cpu"),
            bake(str(base), [LoraSpec(a, 1.0)], str(tmp_path / "b.safetensors"), device="cpu")]
    for res in outs:
        with safe_open(res.path, "pt") as fh:
            md = fh.metadata()
        for k, v in md.items():
            assert "SECRET_FOLDER" not in v and str(tmp_path) not in v, (res.op, k, v)
    assert "a.safetensors" in json.dumps(md)                    # bake recipe names its inputs
    with safe_open(outs[2].path, "pt") as fh:
        assert fh.metadata()["ss_training_comment"] == "dimension is resized from 4 to 2; trained"


def test_extract_metadata_and_dtype_like_kohya(tmp_path):
    g = torch.Generator().manual_seed(0)
    sdb = {k: (torch.arange(77).reshape(s) if "position" in k else torch.randn(*s, generator=g)) for k, s in CKPT.items()}
    save_file(sdb, str(tmp_path / "b.safetensors"))
    save_file({k: (v if "position" in k else v + 0.1 * torch.randn(v.shape, generator=g)) for k, v in sdb.items()},
              str(tmp_path / "t.safetensors"))
    r = extract(str(tmp_path / "t.safetensors"), str(tmp_path / "b.safetensors"), str(tmp_path / "x.safetensors"),
                rank=4, conv_rank=3, device="cpu")
    with safe_open(r.path, "pt") as fh:
        md = fh.metadata()
        assert fh.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight").dtype == torch.float32
    assert md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "4.0"
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "3", "conv_alpha": "3.0"}
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora" and md["modelspec.title"] == "x"
    assert json.loads(md["alloy_lora_recipe"])["clamp_quantile"] == 0.99


def test_kohya_concat_reports_its_error_against_the_sum(tmp_path):
    a, sa = kohya_file(tmp_path / "a.safetensors", 4, factor_dtype=torch.float32, alpha="float", seed=1)
    r = merge_loras([LoraSpec(a, 1.0), LoraSpec(a, 1.0)], str(tmp_path / "k.safetensors"), mode="concat",
                    kohya_alpha=True, device="cpu")
    assert r.overall_error == pytest.approx(0.5, rel=1e-5)    # two equal LoRAs: each weighted alpha/8, not alpha/4
