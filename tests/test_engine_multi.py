"""Multi-model merges through the streaming engine and the CLI on tiny checkpoints with real SD1
key names: six models, per-key kernels, block λ, missing keys, include/exclude, inpainting,
metadata, byte-identical reruns and refusals before any file is read."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from merger.cli import main
from merger.errors import AlloyError
from merger.filemerge import merge_to_file
from merger.methods import MultiParams, get_method
from merger.methods.sparsify import dare_mask
from merger.multimodes import MULTI_MODES
from merger.recipe import Recipe
from tests.fixtures import write_tiny
from tests.test_methods_multi import ref

KEY = "model.diffusion_model.input_blocks.1.1.proj_in.weight"       # block IN01
KEY_OUT = "model.diffusion_model.output_blocks.7.1.norm.bias"        # block OUT07
SLOTS = "abcdef"


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    d = tmp_path_factory.mktemp("six")
    return {s: str(write_tiny(d / f"{s}.safetensors", "sd1", seed=10 + i)) for i, s in enumerate(SLOTS)}


def _recipe(paths, mode, n=5, **kw):
    models = {f"model_{s}": paths[s] for s in SLOTS[: n + 1]}
    return Recipe(mode=mode, **({"dtype": "fp32"} | kw), **models)


def _kernel(mode, tensors, alpha, key, **kw):
    base = tensors[0].float()
    p = MultiParams(weights=tuple(kw.pop("weights", (1.0,) * (len(tensors) - 1))), key=key, **kw)
    return get_method(mode).multi.run(base, tensors[1:], alpha=alpha, params=p)


@pytest.mark.parametrize("mode", list(MULTI_MODES))
def test_every_mode_streams_six_models_exactly_like_its_kernel(six, tmp_path, mode):
    n = 1 if mode == "slerp" else 5
    w = (1.0, 0.5, 2.0, 1.0, 0.75)[:n]
    kw = dict(density=0.4, outliers=0.05, seed=3) | ({"weights": list(w)} if mode != "slerp" else {})
    out = tmp_path / "o.safetensors"
    rep = merge_to_file(_recipe(six, mode, n, alpha=0.8, **kw), str(out), device="cpu")
    R = load_file(str(out))
    srcs = [load_file(six[s]) for s in SLOTS[: n + 1]]
    assert list(R) == list(srcs[0]) and rep.keys_merged > 1000
    for key in (KEY, KEY_OUT, "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        want = _kernel(mode, [s[key] for s in srcs], 0.8, key, weights=w, density=0.4, outliers=0.05, seed=3)
        assert torch.equal(R[key], want), key
    for key in ("alphas_cumprod", "cond_stage_model.transformer.text_model.embeddings.position_ids"):
        assert torch.equal(R[key], srcs[0][key].to(R[key].dtype) if R[key].is_floating_point() else srcs[0][key])


def test_file_merge_matches_float64_reference(six, tmp_path):
    w = [1.0, 0.5, 2.0, 1.0, 0.75]
    for mode in ("task_arithmetic", "dare_linear"):
        out = tmp_path / f"{mode}.safetensors"
        merge_to_file(_recipe(six, mode, weights=w, density=0.3, seed=8, alpha=0.6), str(out), device="cpu")
        srcs = [load_file(six[s])[KEY].double().numpy() for s in SLOTS]
        masks = [dare_mask(srcs[0].shape, 0.3, 8, i, KEY).numpy() for i in range(1, 6)]
        want = ref(mode, srcs[0], srcs[1:], 0.6, w, 0.3, masks=masks)
        got = load_file(str(out))[KEY].double().numpy()
        assert np.max(np.abs(got - want) / np.maximum(1, np.abs(want))) < 1e-5


def test_block_lambdas_elemental_and_exclude(six, tmp_path):
    values = [round(0.05 * i, 2) for i in range(26)]
    out = tmp_path / "o.safetensors"
    r = _recipe(six, "task_arithmetic", 3, alpha_blocks=",".join(map(str, values)),
                elemental="OUT07::1.5", exclude="M00")
    merge_to_file(r, str(out), device="cpu")
    R = load_file(str(out))
    srcs = [load_file(six[s]) for s in "abcd"]
    assert torch.equal(R[KEY], _kernel("task_arithmetic", [s[KEY] for s in srcs], values[2], KEY))      # IN01
    assert torch.equal(R[KEY_OUT], _kernel("task_arithmetic", [s[KEY_OUT] for s in srcs], 1.5, KEY_OUT))
    mid = "model.diffusion_model.middle_block.1.proj_in.weight"
    assert torch.equal(R[mid], srcs[0][mid].float())


def test_a_key_missing_from_any_model_keeps_a(tmp_path):
    paths = {s: str(write_tiny(tmp_path / f"{s}.safetensors", seed=20 + i,
                               edit=(lambda sd: sd.pop(KEY)) if s == "d" else None)) for i, s in enumerate("abcd")}
    out = tmp_path / "o.safetensors"
    merge_to_file(_recipe(paths, "ties", 3), str(out), device="cpu")
    R, A = load_file(str(out)), load_file(paths["a"])
    assert torch.equal(R[KEY], A[KEY].float())
    assert not torch.equal(R[KEY_OUT], A[KEY_OUT].float())


def test_inpainting_base_merges_its_first_four_channels(tmp_path):
    key = "model.diffusion_model.input_blocks.0.0.weight"

    def nine(sd):
        w = sd[key]
        sd[key] = torch.cat([w, torch.randn(w.shape[0], 5, *w.shape[2:]).to(w.dtype)], dim=1)

    paths = {"a": str(write_tiny(tmp_path / "a.safetensors", seed=1, edit=nine))}
    paths.update({s: str(write_tiny(tmp_path / f"{s}.safetensors", seed=i)) for i, s in enumerate("bc", 2)})
    out = tmp_path / "o.safetensors"
    merge_to_file(_recipe(paths, "ties", 2, density=0.5), str(out), device="cpu")
    R, srcs = load_file(str(out))[key], [load_file(paths[s])[key] for s in "abc"]
    assert R.shape[1] == 9 and torch.equal(R[:, 4:], srcs[0][:, 4:].float())
    want = _kernel("ties", [srcs[0][:, :4].contiguous(), srcs[1], srcs[2]], 1.0, key, density=0.5)
    assert torch.equal(R[:, :4], want)


def test_metadata_names_all_six_models_and_reruns_byte_identically(six, tmp_path):
    out1, out2 = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    rep = merge_to_file(_recipe(six, "dare_ties", density=0.3, seed=5, dtype="fp16"), str(out1), device="cpu")
    assert set(rep.recipe.hashes) == set(SLOTS)
    merge_to_file(Recipe.from_json(rep.recipe.to_json()), str(out2), device="cpu", verify_hashes=True)
    assert out1.read_bytes() == out2.read_bytes()
    with safe_open(str(out1), "pt") as f:
        md = f.metadata()
    recipe = json.loads(md["alloy_recipe"])
    assert recipe["mode"] == "dare_ties" and recipe["model_f"] == "f.safetensors" and recipe["seed"] == 5
    assert set(json.loads(md["sd_merge_models"])) == set(rep.recipe.hashes.values())
    assert json.loads(md["sd_merge_recipe"])["interp_method"] == "dare_ties"
    other = tmp_path / "3.safetensors"
    merge_to_file(_recipe(six, "dare_ties", density=0.3, seed=6, dtype="fp16"), str(other), device="cpu")
    assert not torch.equal(load_file(str(other))[KEY], load_file(str(out1))[KEY])


@pytest.mark.parametrize("kw,msg", [
    (dict(mode="slerp", model_c="c"), "SLERP merges exactly two models"),
    (dict(mode="model_stock"), "Model stock needs"),
    (dict(mode="ties", density=0), "density"),
    (dict(mode="ties", model_c="c", weights=[1]), "give one weight per model"),
])
def test_refused_before_any_file_is_opened(tmp_path, kw, msg):
    r = Recipe(model_a=str(tmp_path / "missing-a.safetensors"), model_b=str(tmp_path / "missing-b.safetensors"), **kw)
    with pytest.raises(AlloyError, match=msg):
        merge_to_file(r, str(tmp_path / "o.safetensors"), device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_cli_six_models_weights_and_errors(six, tmp_path, capsys):
    out, rec = tmp_path / "m.safetensors", tmp_path / "r.json"
    args = ["merge", "--model-a", six["a"], "--model-b", six["b"], "--model-c", six["c"], "--model-d", six["d"],
            "--model-e", six["e"], "--model-f", six["f"], "--mode", "breadcrumbs", "--weights", "1,0.5,1,1,2",
            "--density", "0.6", "--outliers", "0.02", "--alpha", "0.9", "--out", str(out),
            "--recipe-out", str(rec), "--quiet"]
    assert main(args) == 0
    r = json.loads(rec.read_text())
    assert (r["weights"], r["density"], r["outliers"], r["alpha"]) == ([1, 0.5, 1, 1, 2], 0.6, 0.02, 0.9)
    models_dir = str(__import__("pathlib").Path(six["a"]).parent)
    assert main(["run", str(rec), "--models-dir", models_dir, "--out", str(tmp_path / "again.safetensors"),
                 "--quiet"]) == 0
    assert out.read_bytes() == (tmp_path / "again.safetensors").read_bytes()
    assert main(["merge", "--model-a", six["a"], "--model-b", six["b"], "--mode", "task_arithmetic", "--out",
                 str(tmp_path / "ta.safetensors"), "--quiet"]) == 0
    assert json.loads(safe_open(str(tmp_path / "ta.safetensors"), "pt").metadata()["alloy_recipe"])["alpha"] == 1.0
    capsys.readouterr()
    code = main(["merge", "--model-a", six["a"], "--model-b", six["b"], "--model-c", six["c"], "--mode", "slerp",
                 "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: SLERP merges exactly two models") and err.count("\n") == 1


def test_ceil_counts_reach_the_engine(tmp_path):
    """A 100-element tensor at d = 0.55 keeps math.ceil(55.00000000000001) = 56 entries."""
    key = "model.diffusion_model.out.2.bias"
    paths = {}
    for s, seed in (("a", 1), ("b", 2)):
        paths[s] = str(write_tiny(tmp_path / f"{s}.safetensors", seed=seed, edit=lambda sd, seed=seed: sd.__setitem__(
            key, (torch.arange(100.0) * seed / 64).to(torch.float16))))
    out = tmp_path / "o.safetensors"
    merge_to_file(_recipe(paths, "ties", 1, density=0.55), str(out), device="cpu")
    R, A = load_file(str(out))[key], load_file(paths["a"])[key].float()
    assert int((R != A).sum()) == math.ceil(0.55 * 100) == 56         # |τ| = i/64: indices 44…99 kept


def test_adjust_applies_to_the_merged_tensor(six, tmp_path):
    from merger.adjust import apply_adjust, parse_adjust
    from merger.arch import get_arch
    plain, adjusted = tmp_path / "p.safetensors", tmp_path / "j.safetensors"
    values = "0.1,0.2,0,0.3,0.1,0,0,0"
    merge_to_file(_recipe(six, "ties", 3, density=0.4), str(plain), device="cpu")
    merge_to_file(_recipe(six, "ties", 3, density=0.4, adjust=values), str(adjusted), device="cpu")
    P, J = load_file(str(plain)), load_file(str(adjusted))
    arch = get_arch("sd1")
    changed = [k for k in P if not torch.equal(P[k], J[k])]
    assert changed and set(changed) <= set(arch.adjust_keys.values())
    for key in changed:
        assert torch.equal(J[key], apply_adjust(key, P[key], parse_adjust(values), arch))


def test_seed_minus_one_draws_a_new_recorded_seed_for_dare(six, tmp_path):
    out = tmp_path / "o.safetensors"
    rep = merge_to_file(_recipe(six, "dare_linear", 2, seed=-1), str(out), device="cpu")
    seed = rep.recipe.seed
    assert seed >= 0
    again = tmp_path / "again.safetensors"
    merge_to_file(_recipe(six, "dare_linear", 2, seed=seed), str(again), device="cpu")
    assert torch.equal(load_file(str(out))[KEY], load_file(str(again))[KEY])
    ties = merge_to_file(_recipe(six, "ties", 2, seed=-1), str(tmp_path / "t.safetensors"), device="cpu")
    assert ties.recipe.seed == -1                                   # TIES does not use the seed
    big = merge_to_file(_recipe(six, "dare_linear", 2, seed=1 << 40), str(tmp_path / "b.safetensors"), device="cpu")
    assert big.recipe.seed == 1 << 40
