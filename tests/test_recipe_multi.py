"""The recipe's multi-model fields: old recipes unchanged, defaults, parsing, identity, and the
combinations refused before any file is opened."""
import json

import pytest

from merger.errors import AlloyError
from merger.recipe import Recipe

OLD_JSON = {"type": "alloy-merge", "version": 1, "model_a": "a", "model_b": "b", "model_c": None,
            "mode": "weight_sum", "calc": "normal", "alpha": 0.5, "beta": 0.25, "gamma": 0.3,
            "alpha_blocks": None, "beta_blocks": None, "elemental": "", "include": "", "exclude": "",
            "adjust": "", "dtype": "fp16", "compute_dtype": "fp32", "prune": False, "bake_vae": None,
            "fix_clip_ids": False, "seed": 0, "hashes": {}}


def test_old_recipes_load_and_serialise_unchanged():
    r = Recipe.from_dict(OLD_JSON)
    assert r.to_dict() == OLD_JSON
    assert r.short_hash() == "e22807e342"          # the hash this recipe had before the new modes
    assert Recipe("a", "b").to_dict() == OLD_JSON  # defaults unchanged, alpha 0.5
    legacy = Recipe.from_dict({"model_a": "a", "model_b": "b", "model_c": "c", "mode": "Add difference",
                               "alpha": 0.7})
    assert legacy.mode == "add_difference" and legacy.alpha == 0.7 and "weights" not in legacy.to_dict()


def test_alpha_defaults_per_mode_and_explicit_values_win():
    assert Recipe("a", "b", mode="ties").alpha == 1.0
    assert Recipe("a", "b", mode="slerp").alpha == 0.5
    assert Recipe("a", "b", mode="weight_sum").alpha == 0.5
    assert Recipe("a", "b", mode="ties", alpha=0.3).alpha == 0.3
    assert Recipe.from_dict({"model_a": "a", "model_b": "b", "mode": "Task arithmetic"}).alpha == 1.0


@pytest.mark.parametrize("spelling,mode", [("TIES", "ties"), ("DARE linear", "dare_linear"), ("dare-ties", "dare_ties"),
                                           ("Task arithmetic", "task_arithmetic"), ("Model stock", "model_stock"),
                                           ("geometric median", "geometric_median"), ("SLERP", "slerp"),
                                           ("Breadcrumbs", "breadcrumbs")])
def test_mode_spellings(spelling, mode):
    assert Recipe("a", "b", mode=spelling).mode == mode


def test_multi_recipe_round_trip_and_weights_forms():
    r = Recipe("a", "b", "c", model_d="d", model_e="e", model_f="f", mode="dare_ties", weights="1, 0.5 2 1 1",
               density=0.3, seed=9)
    r.validate()
    assert r.weights == [1.0, 0.5, 2.0, 1.0, 1.0]
    back = Recipe.from_json(r.to_json())
    assert back == r and back.to_dict() == r.to_dict()
    assert json.loads(r.to_json())["model_f"] == "f"
    assert Recipe("a", "b", mode="ties", weights=[2, 1.5]).weights == [2.0, 1.5]
    assert Recipe("a", "b", mode="ties", weights="").weights is None
    for bad in ("1,x", [1, "nan"], "inf", {"b": 1}):
        with pytest.raises(AlloyError, match="weights"):
            Recipe("a", "b", mode="ties", weights=bad)


def test_identity_ignores_what_the_mode_does_not_use():
    base = Recipe("a", "b", "c", mode="task_arithmetic", alpha=0.8)
    assert base.short_hash() == base.replace(density=0.2, outliers=0.3).short_hash()   # not used by TA
    assert base.short_hash() == base.replace(weights=[1, 1]).short_hash()             # weights of 1 = none
    assert base.short_hash() != base.replace(weights=[1, 2]).short_hash()
    ties = base.replace(mode="ties")
    assert ties.short_hash() != ties.replace(density=0.2).short_hash()
    assert base.short_hash() != base.replace(model_d="d").short_hash()
    assert Recipe("a", "b").short_hash() == Recipe("a", "b", density=0.9).short_hash()  # classic modes


def test_display_names():
    r = Recipe("/m/base.safetensors", "/m/x.safetensors", "/m/y.safetensors", mode="ties", weights=[1, 0.5],
               density=0.3)
    assert r.display_name() == "TIES(base; x, y) x 1 (w=1,0.5, d=0.3)"
    assert Recipe("a", "b", mode="slerp", alpha=0.25).display_name() == "SLERP(a, b) t=0.25"
    assert "seed=4" in Recipe("a", "b", mode="dare_linear", seed=4).display_name()


BAD = [
    (dict(mode="slerp", model_c="c"), "SLERP merges exactly two models"),
    (dict(mode="model_stock"), "Model stock needs at least 3 models"),
    (dict(mode="ties", density=0.0), "density must be greater than 0"),
    (dict(mode="ties", density=1.5), "field 'density' must be a number from 0 to 1"),
    (dict(mode="dare_linear", density=float("nan")), "field 'density' must be a finite number"),
    (dict(mode="breadcrumbs", outliers=1.0), "outliers must be at least 0 and less than 1"),
    (dict(mode="breadcrumbs", outliers=-0.1), "field 'outliers' must be a number from 0 to 1"),
    (dict(mode="ties", model_c="c", weights=[1, 2, 3]), "weights has 3 values but TIES merges 2 fine-tuned models"),
    (dict(mode="task_arithmetic", weights=[1, 2]), r"merges 1 fine-tuned model \(B\)"),
    (dict(mode="ties", model_d="d"), "Model D is set but model C is empty"),
    (dict(mode="weight_sum", model_e="e"), "Weight sum does not take model E"),
    (dict(mode="ties", calc="cosineA"), "TIES works with calculation mode normal only"),
    (dict(mode="ties", calc="trainDifference"), "TIES works with calculation mode normal only"),
    (dict(mode="geometric_median", model_c="c", weights=[1, 0]), "Geometric median weights must be greater than 0"),
]


@pytest.mark.parametrize("kw,msg", BAD, ids=[m for _, m in BAD])
def test_bad_combinations_are_one_sentence(kw, msg):
    with pytest.raises(AlloyError, match=msg) as e:
        Recipe("a", "b", **kw).validate()
    text = str(e.value)
    assert text.endswith(".") and "\n" not in text


def test_weights_not_used_by_the_mode_are_not_counted():
    Recipe("a", "b", "c", mode="model_stock", weights=[1]).validate()      # model stock takes no weights
    Recipe("a", "b", mode="slerp", weights=[1, 2, 3]).validate()


def test_png_infotext_carries_a_multi_recipe():
    from merger.ui.recipe_sources import recipe_from_png_info
    r = Recipe("A.safetensors", "B.safetensors", "C.safetensors", model_d="D.safetensors", mode="dare_linear",
               weights=[1, 2, 0.5], density=0.2, seed=77, alpha=0.9)
    params = ("a photo\nSteps: 20, Seed: 1, Alloy merge: x, Alloy hash: " + r.short_hash()
              + ", Alloy recipe: " + json.dumps(r.to_dict(), separators=(",", ":")))
    assert recipe_from_png_info({"parameters": params}) == r
