"""The streaming engine end to end on tiny checkpoints with real SD1/SDXL/Flux key names."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from merger.errors import AlloyError
from merger.filemerge import merge_to_file
from merger.recipe import Recipe
from tests.fixtures import tiny_state_dict, write_tiny

SD1_BLOCKS = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]


@pytest.fixture
def sd1(tmp_path):
    a = write_tiny(tmp_path / "a.safetensors", "sd1", seed=1)
    b = write_tiny(tmp_path / "b.safetensors", "sd1", seed=2)
    c = write_tiny(tmp_path / "c.safetensors", "sd1", seed=3)
    return a, b, c


def _lerp64(a, b, t):
    return (a.double() * (1 - t) + b.double() * t)


def _close_fp16(got, want64):
    """got (fp16) equals the float64 reference rounded to fp16, within one fp16 ulp."""
    want = want64.to(torch.float16)
    assert got.dtype == torch.float16
    diff = (got.float() - want.float()).abs()
    ulp = want.float().abs().clamp_min(2 ** -14) * 2 ** -10
    assert bool((diff <= ulp * 1.01).all()), f"max diff {diff.max()}"


def test_weight_sum_matches_formula_and_keeps_unmerged(sd1, tmp_path):
    a, b, _ = sd1
    out = tmp_path / "out.safetensors"
    rep = merge_to_file(Recipe(str(a), str(b), alpha=0.3), str(out), device="cpu")
    A, B, R = load_file(str(a)), load_file(str(b)), load_file(str(out))
    assert list(R) == list(load_file(str(a)))  # same keys
    merged = 0
    for k, t in R.items():
        if not A[k].dtype.is_floating_point or "model" not in k or not ("weight" in k or "bias" in k):
            assert torch.equal(t, A[k]), k
            continue
        merged += 1
        _close_fp16(t, _lerp64(A[k], B[k], 0.3))
    assert merged == rep.keys_merged and merged > 1000
    assert R["alphas_cumprod"].dtype == A["alphas_cumprod"].dtype


def test_block_weights_pick_the_right_ratio(sd1, tmp_path):
    a, b, _ = sd1
    values = [round(0.01 + i * 0.035, 3) for i in range(26)]
    out = tmp_path / "o.safetensors"
    merge_to_file(Recipe(str(a), str(b), alpha_blocks=",".join(map(str, values))), str(out), device="cpu")
    A, B, R = load_file(str(a)), load_file(str(b)), load_file(str(out))
    checks = {
        "model.diffusion_model.input_blocks.3.0.op.weight": "IN03",
        "model.diffusion_model.middle_block.1.proj_in.weight": "M00",
        "model.diffusion_model.output_blocks.7.1.norm.bias": "OUT07",
        "model.diffusion_model.time_embed.0.weight": "OUT11",
        "model.diffusion_model.out.2.weight": "OUT11",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": "BASE",
        "first_stage_model.decoder.conv_in.weight": "BASE",
    }
    for key, block in checks.items():
        _close_fp16(R[key], _lerp64(A[key], B[key], values[SD1_BLOCKS.index(block)]))


def test_modes_through_engine(sd1, tmp_path):
    a, b, c = sd1
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    A, B, C = (load_file(str(p))[key].double() for p in (a, b, c))
    cases = {
        ("add_difference", 0.7, 0.0): A + 0.7 * (B - C),
        ("triple_sum", 0.3, 0.2): (1 - 0.3 - 0.2) * A + 0.3 * B + 0.2 * C,
        ("sum_twice", 0.4, 0.25): (1 - 0.25) * ((1 - 0.4) * A + 0.4 * B) + 0.25 * C,
    }
    for (mode, al, be), want in cases.items():
        out = tmp_path / f"{mode}.safetensors"
        merge_to_file(Recipe(str(a), str(b), str(c), mode=mode, alpha=al, beta=be, dtype="fp32"), str(out),
                      device="cpu")
        got = load_file(str(out))[key]
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), want, atol=1e-6, rtol=1e-5), mode


def test_metadata_and_byte_identical_rerun(sd1, tmp_path):
    a, b, _ = sd1
    out1, out2 = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    rep = merge_to_file(Recipe(str(a), str(b), alpha=0.25), str(out1), device="cpu")
    assert set(rep.recipe.hashes) == {"a", "b"} and len(rep.recipe.hashes["a"]) == 64
    merge_to_file(Recipe.from_json(rep.recipe.to_json()), str(out2), device="cpu", verify_hashes=True)
    assert out1.read_bytes() == out2.read_bytes()
    with safe_open(str(out1), "pt") as f:
        md = f.metadata()
    assert json.loads(md["alloy_recipe"])["alpha"] == 0.25
    sdm = json.loads(md["sd_merge_recipe"])
    assert sdm["primary_model_hash"] == rep.recipe.hashes["a"] and sdm["interp_method"] == "Weighted sum"
    models = json.loads(md["sd_merge_models"])
    assert models[rep.recipe.hashes["b"]]["name"] == "b.safetensors"


def test_recipe_hash_mismatch_refused(sd1, tmp_path):
    a, b, _ = sd1
    r = Recipe(str(a), str(b), hashes={"a": "0" * 64})
    out = tmp_path / "x.safetensors"
    with pytest.raises(AlloyError, match="sha256"):
        merge_to_file(r, str(out), device="cpu", verify_hashes=True)
    assert not out.exists() and list(tmp_path.glob(".*tmp*")) == []


def test_b_only_keys_copied_a_only_kept(tmp_path):
    a = write_tiny(tmp_path / "a.safetensors", seed=1,
                   edit=lambda sd: sd.pop("model.diffusion_model.out.2.bias"))
    b = write_tiny(tmp_path / "b.safetensors", seed=2,
                   edit=lambda sd: sd.pop("model.diffusion_model.out.0.bias"))
    out = tmp_path / "o.safetensors"
    merge_to_file(Recipe(str(a), str(b)), str(out), device="cpu")
    R, A, B = load_file(str(out)), load_file(str(a)), load_file(str(b))
    assert torch.equal(R["model.diffusion_model.out.2.bias"], B["model.diffusion_model.out.2.bias"])
    assert torch.equal(R["model.diffusion_model.out.0.bias"], A["model.diffusion_model.out.0.bias"])


def test_inpainting_first_conv(tmp_path):
    key = "model.diffusion_model.input_blocks.0.0.weight"

    def nine(sd):
        w = sd[key]
        sd[key] = torch.cat([w, torch.randn(w.shape[0], 5, *w.shape[2:]).to(w.dtype)], dim=1)

    a = write_tiny(tmp_path / "a.safetensors", seed=1, edit=nine)
    b = write_tiny(tmp_path / "b.safetensors", seed=2)
    out = tmp_path / "o.safetensors"
    merge_to_file(Recipe(str(a), str(b), alpha=0.5, dtype="fp32"), str(out), device="cpu")
    R, A, B = load_file(str(out))[key], load_file(str(a))[key], load_file(str(b))[key]
    assert R.shape[1] == 9
    assert torch.equal(R[:, 4:], A[:, 4:].float())
    assert torch.allclose(R[:, :4].double(), _lerp64(A[:, :4], B, 0.5), atol=1e-6)
    with pytest.raises(AlloyError, match="must be model A"):
        merge_to_file(Recipe(str(b), str(a)), str(tmp_path / "p.safetensors"), device="cpu")


@pytest.mark.parametrize("problem", ["arch", "shape", "blocks", "preset", "nan", "overwrite", "truncated"])
def test_refusals_write_nothing(sd1, tmp_path, problem):
    a, b, _ = sd1
    out = tmp_path / "out.safetensors"
    r = Recipe(str(a), str(b))
    if problem == "arch":
        r.model_b = str(write_tiny(tmp_path / "xl.safetensors", "sdxl", seed=2))
        match = "SDXL|sdxl"
    elif problem == "shape":
        bad = tmp_path / "bad.safetensors"
        write_tiny(bad, seed=2, edit=lambda sd: sd.__setitem__(
            "model.diffusion_model.out.2.weight", torch.zeros(3, 3, 3, 3, dtype=torch.float16)))
        r.model_b, match = str(bad), "out.2.weight"
    elif problem == "blocks":
        r.alpha_blocks, match = "0.1,0.2,0.3", "3"
    elif problem == "preset":
        r.alpha_blocks, match = "NO_SUCH_PRESET", "NO_SUCH_PRESET"
    elif problem == "nan":
        bad = tmp_path / "nan.safetensors"

        def put_nan(sd):
            sd["model.diffusion_model.input_blocks.1.0.emb_layers.1.weight"][0, 0] = float("nan")

        write_tiny(bad, seed=2, edit=put_nan)
        r.model_b, match = str(bad), "NaN"
    elif problem == "overwrite":
        out.write_bytes(b"old")
        match = "overwrite"
    else:
        data = b.read_bytes()
        bad = tmp_path / "trunc.safetensors"
        bad.write_bytes(data[: len(data) // 2])
        r.model_b, match = str(bad), "trunc"
    with pytest.raises(AlloyError, match=match):
        merge_to_file(r, str(out), device="cpu")
    if problem == "overwrite":
        assert out.read_bytes() == b"old"
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_prune_bake_vae_and_clip_ids(tmp_path):
    def broken_ids(sd):
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"][0, 5] = 7

    a = write_tiny(tmp_path / "a.safetensors", seed=1, default_only=False, edit=broken_ids)
    b = write_tiny(tmp_path / "b.safetensors", seed=2)
    vae = {k[len("first_stage_model."):]: v for k, v in tiny_state_dict(seed=9).items()
           if k.startswith("first_stage_model.")}
    save_file(vae, str(tmp_path / "vae.safetensors"))
    out = tmp_path / "o.safetensors"
    merge_to_file(Recipe(str(a), str(b), prune=True, bake_vae=str(tmp_path / "vae.safetensors"),
                         fix_clip_ids=True), str(out), device="cpu")
    R = load_file(str(out))
    assert not any(k.startswith("model_ema") for k in R) and "alphas_cumprod" not in R
    assert torch.equal(R["first_stage_model.decoder.conv_in.weight"], vae["decoder.conv_in.weight"])
    ids = R["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64 and ids.flatten().tolist() == list(range(77))


def test_sdxl_26_values_and_flux_bare(tmp_path):
    a = write_tiny(tmp_path / "a.safetensors", "sdxl", seed=1)
    b = write_tiny(tmp_path / "b.safetensors", "sdxl", seed=2)
    values = [0.0] + [0.5] * 25
    out = tmp_path / "xl.safetensors"
    merge_to_file(Recipe(str(a), str(b), alpha_blocks=",".join(map(str, values))), str(out), device="cpu")
    R, A = load_file(str(out)), load_file(str(a))
    key = "conditioner.embedders.1.model.ln_final.weight"
    assert torch.equal(R[key], A[key])  # BASE = 0
    fa = write_tiny(tmp_path / "fa.safetensors", "flux", seed=1, bare=True, dtype=torch.bfloat16)
    fb = write_tiny(tmp_path / "fb.safetensors", "flux", seed=2, bare=True, dtype=torch.bfloat16)
    fo = tmp_path / "f.safetensors"
    merge_to_file(Recipe(str(fa), str(fb), alpha=1.0, dtype="keep"), str(fo), device="cpu")
    R, B = load_file(str(fo)), load_file(str(fb))
    assert torch.equal(R["double_blocks.0.img_attn.qkv.weight"], B["double_blocks.0.img_attn.qkv.weight"])


def test_compute_fp64_and_keep_dtype(sd1, tmp_path):
    a, b, _ = sd1
    out = tmp_path / "o.safetensors"
    merge_to_file(Recipe(str(a), str(b), alpha=0.37, compute_dtype="fp64", dtype="keep"), str(out), device="cpu")
    R, A, B = load_file(str(out)), load_file(str(a)), load_file(str(b))
    k = "model.diffusion_model.input_blocks.4.1.proj_out.weight"
    assert R[k].dtype == torch.float16
    assert torch.equal(R[k], _lerp64(A[k], B[k], 0.37).to(torch.float16))


def test_input_hashes_are_cached_per_user(sd1, tmp_path, monkeypatch):
    a, b, _ = sd1
    monkeypatch.setenv("ALLOY_CACHE_DIR", str(tmp_path / "cache"))
    rep = merge_to_file(Recipe(str(a), str(b)), str(tmp_path / "o.safetensors"), device="cpu")
    cached = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert {v["sha256"] for v in cached.values()} == {rep.recipe.hashes["a"], rep.recipe.hashes["b"]}
