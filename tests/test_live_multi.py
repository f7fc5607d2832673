"""Multi-model merges into the live model (WebUI stand-in): six models in place, exact restore, the
derived-tensor cache that makes a λ sweep cost one fused add per key, and the X/Y/Z axes."""
import pytest
import torch

from tests.webui_standin.harness import diff_keys, make_world, snapshot


def _world(tmp_path):
    w = make_world(tmp_path)
    import tinysd
    for s, seed in (("d", 4), ("e", 5), ("f", 6)):
        w.paths[s] = tinysd.write_checkpoint(w.models / f"{s.upper()}.safetensors", seed)
    w.sd_models.list_models()
    return w


def _session(w):
    from merger.session import Session
    from merger.webui import WebUIHost
    return Session(WebUIHost(), str(w.tmp / "data"))


def _recipe(w, mode, **kw):
    from merger.recipe import Recipe
    return Recipe(**{f"model_{s}": w.paths[s] for s in "abcdef"}, mode=mode, **kw)


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of the TIES kernel (the trim and election) through the registry's prepare step."""
    from merger.methods import taskvec
    calls = {"n": 0}
    real = taskvec.ties

    def ties(*a, **kw):
        calls["n"] += 1
        return real(*a, **kw)
    monkeypatch.setattr(taskvec, "ties", ties)
    return calls


def test_lambda_sweep_reuses_the_trimmed_task_vectors(tmp_path, counted):
    w = _world(tmp_path)
    orig = snapshot(w.model)
    s = _session(w)
    r = _recipe(w, "ties", density=0.3, alpha=0.5, weights=[1, 0.5, 1, 2, 1])
    rep = s.merge_live(r)
    merged = rep.keys_merged
    assert merged > 250 and counted["n"] == merged
    st0 = s.cache.stats()
    assert st0.derived_misses >= merged
    for lam in (0.9, 1.3, 0.2):
        rep = s.merge_live(r.replace(alpha=lam))
        assert rep.keys_merged == merged
    st1 = s.cache.stats()
    assert counted["n"] == merged                                  # no re-trim for a λ change
    assert st1.derived_hits - st0.derived_hits == 3 * merged
    # the cached path gives exactly what a fresh file merge of the same recipe gives
    live = snapshot(w.model)
    report = s.merge_to_file(r.replace(alpha=0.2, dtype="fp16"), "check")
    from safetensors.torch import load_file
    out = load_file(report.path)
    keys = {kp.key for kp in s.live.plan.items if kp.action == "merge"}
    assert keys and all(torch.equal(live[k], out[k]) for k in keys)
    # density is not a λ: it recomputes the trim (the file merge above computed its own: no cache)
    assert counted["n"] == 2 * merged
    s.merge_live(r.replace(alpha=0.2, density=0.6))
    assert counted["n"] == 3 * merged
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))


def test_block_lambda_change_recomputes_only_those_keys_and_restore_is_exact(tmp_path, counted):
    w = _world(tmp_path)
    orig = snapshot(w.model)
    s = _session(w)
    r = _recipe(w, "ties", alpha_blocks=",".join(["1"] * 26))
    s.merge_live(r)
    n0 = s.cache.stats().derived_hits
    rep = s.merge_live(r.replace(alpha_blocks=",".join(["1"] * 25 + ["0.5"])))     # OUT11 only
    assert 0 < rep.keys_written < 40 and s.cache.stats().derived_hits - n0 == rep.keys_written
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))


@pytest.mark.parametrize("mode", ["slerp", "model_stock", "geometric_median", "dare_linear"])
def test_other_modes_live_equal_file_and_restore(tmp_path, mode):
    w = _world(tmp_path)
    orig = snapshot(w.model)
    s = _session(w)
    r = _recipe(w, mode, alpha=0.7, density=0.4, seed=2)
    if mode == "slerp":
        r = r.replace(model_c=None, model_d=None, model_e=None, model_f=None)
    s.merge_live(r)
    s.merge_live(r.replace(alpha=0.4))                                          # from the derived cache
    live = snapshot(w.model)
    from safetensors.torch import load_file
    out = load_file(s.merge_to_file(r.replace(alpha=0.4), "check").path)
    keys = {kp.key for kp in s.live.plan.items if kp.action == "merge"}
    assert all(torch.equal(live[k], out[k]) for k in keys)
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))


def test_derived_tensors_live_within_the_cache_budget(tmp_path):
    w = _world(tmp_path)
    s = _session(w)
    s.cache.set_budget(200_000)
    s.merge_live(_recipe(w, "ties", density=0.3))
    st = s.cache.stats()
    assert st.bytes <= 200_000
    r = _recipe(w, "ties", density=0.3, alpha=0.4)
    s.merge_live(r)                                                           # mostly evicted: recomputed
    assert s.cache.stats().bytes <= 200_000
    from safetensors.torch import load_file
    out, live = load_file(s.merge_to_file(r, "check").path), snapshot(w.model)
    assert all(torch.equal(live[kp.key], out[kp.key]) for kp in s.live.plan.items if kp.action == "merge")


def test_xyz_axes_for_the_new_modes(tmp_path):
    from merger.errors import AlloyError
    from merger.recipe import Recipe
    from merger.xyz import cell_recipe
    from tests.test_xyz import _run, _setup
    w, session, grid, labels = _setup(tmp_path)
    import tinysd
    for s, seed in (("d", 4), ("e", 5), ("f", 6)):
        w.paths[s] = tinysd.write_checkpoint(w.models / f"{s.upper()}.safetensors", seed)
    w.sd_models.list_models()
    session.set_draft(_recipe(w, "dare_ties", density=0.5))
    for label in ("[Alloy] Density", "[Alloy] Weights", "[Alloy] Weight C", "[Alloy] Model F",
                  "[Alloy] Random seed", "[Alloy] Outliers"):
        assert label in labels
    w.shared.opts.data["alloy_restore_after_xyz"] = False
    _run(w, grid, labels.index("[Alloy] Density"), "0.3,0.6", labels.index("[Alloy] Weight C"), "0.5,2")
    assert session.live.recipe.density == 0.6 and session.live.recipe.weights == [1, 2, 1, 1, 1]
    _run(w, grid, labels.index("[Alloy] Weights"), '"1,1,1,1,0.5"', labels.index("[Alloy] Merge mode"),
         "TIES,Model stock")
    assert session.live.recipe.mode == "model_stock" and session.live.recipe.weights == [1, 1, 1, 1, 0.5]
    with pytest.raises(AlloyError, match="has no model F"):
        cell_recipe(Recipe(model_a="a", model_b="b", mode="ties"), {"weight_f": "2"})


def test_rest_api_carries_the_new_fields(tmp_path):
    from tests.webui_standin.harness import api_world
    w, s, c = api_world(tmp_path)
    import tinysd
    tinysd.write_checkpoint(w.models / "D.safetensors", 4)
    w.sd_models.list_models()
    orig = snapshot(w.model)
    recipe = {"model_a": "A.safetensors", "model_b": "B.safetensors", "model_c": "C.safetensors",
              "model_d": "D.safetensors", "mode": "ties", "weights": [1, 0.5, 2], "density": 0.4}
    r = c.post("/alloy/v1/merge", json={"recipe": recipe})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipe"]["weights"] == [1, 0.5, 2] and body["recipe"]["alpha"] == 1.0
    assert c.get("/alloy/v1/status").json()["recipe"]["model_d"].endswith("D.safetensors")
    r = c.post("/alloy/v1/merge", json={"recipe": dict(recipe, alpha=0.5), "target": "file", "name": "t"})
    assert r.status_code == 200 and r.json()["recipe"]["density"] == 0.4
    merged = snapshot(w.model)
    for bad, msg in ((dict(recipe, weights=[1, 2]), "give one weight per model"),
                     (dict(recipe, mode="slerp"), "SLERP merges exactly two models"),
                     (dict(recipe, density=2), "density")):
        r = c.post("/alloy/v1/merge", json={"recipe": bad})
        assert r.status_code == 400 and msg in r.json()["detail"]
    assert not diff_keys(merged, snapshot(w.model))
    assert c.post("/alloy/v1/restore").status_code == 200
    assert not diff_keys(orig, snapshot(w.model))
