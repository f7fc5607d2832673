"""The real WebUI wraps the text encoder after loading (sd_hijack): its parameters are named
`cond_stage_model.wrapped.…` / `…token_embedding.wrapped.weight`. Live merges must still reach them."""
import torch

from tests.webui_standin.harness import diff_keys, make_world, snapshot

TE = "cond_stage_model.transformer.text_model."


def test_the_standin_model_is_hijacked_like_the_webui(tmp_path):
    w = make_world(tmp_path)
    names = dict(w.model.named_parameters())
    assert any(n.startswith("cond_stage_model.wrapped.transformer.") for n in names)
    assert any(n.endswith("token_embedding.wrapped.weight") for n in names)


def test_live_merge_reaches_the_hijacked_text_encoder_and_restores_it(tmp_path):
    from merger.recipe import Recipe
    from merger.session import Session
    from merger.webui import WebUIHost
    w = make_world(tmp_path)
    orig = snapshot(w.model)
    s = Session(WebUIHost(), str(w.tmp / "data"))
    s.merge_live(Recipe(model_a=w.paths["a"], model_b=w.paths["b"], alpha=0.5))
    changed = diff_keys(orig, snapshot(w.model))
    te_merged = {kp.key for kp in s.live.plan.items if kp.action == "merge" and kp.key.startswith(TE)}
    assert te_merged and te_merged <= changed
    assert TE + "embeddings.token_embedding.weight" in changed
    s.restore()
    assert not diff_keys(orig, snapshot(w.model))


def test_owner_map_names_wrapped_tensors_by_checkpoint_key(tmp_path):
    from merger.live import owner_map
    w = make_world(tmp_path)
    owners = owner_map(w.model)
    module, attr = owners[TE + "embeddings.token_embedding.weight"]
    assert getattr(module, attr) is w.model.cond_stage_model.wrapped.transformer.text_model.embeddings \
        .token_embedding.wrapped.weight
    assert isinstance(getattr(module, attr), torch.nn.Parameter)
