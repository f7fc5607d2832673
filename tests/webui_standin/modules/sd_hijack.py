"""Stand-in of modules.sd_hijack (v1.10.1): after a checkpoint's weights are loaded the WebUI wraps
the SD1 text encoder (`m.cond_stage_model = FrozenCLIPEmbedderWithCustomWords(m.cond_stage_model)`)
and its token embedding (`EmbeddingsWithFixes`), each holding the original module as `.wrapped`.
From then on the model's parameter names are `cond_stage_model.wrapped.transformer…` and
`…token_embedding.wrapped.weight`, not the checkpoint keys. `undo_hijack` runs before a reload."""
import types

import torch


class CLIPWithCustomWords(torch.nn.Module):
    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped


class EmbeddingsWithFixes(torch.nn.Module):
    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped


def _embeddings(clip):
    node = clip
    for name in ("transformer", "text_model", "embeddings"):
        node = getattr(node, name, None) if node is not None and name in node._modules else None
    return node


def hijack(m) -> None:
    clip = getattr(m, "cond_stage_model", None)
    if clip is None or isinstance(clip, CLIPWithCustomWords):
        return
    emb = _embeddings(clip)
    if emb is not None and "token_embedding" in emb._modules:
        emb.token_embedding = EmbeddingsWithFixes(emb.token_embedding)
    m.cond_stage_model = CLIPWithCustomWords(clip)


def undo_hijack(m) -> None:
    clip = getattr(m, "cond_stage_model", None)
    if not isinstance(clip, CLIPWithCustomWords):
        return
    m.cond_stage_model = clip.wrapped
    emb = _embeddings(m.cond_stage_model)
    if emb is not None and isinstance(emb._modules.get("token_embedding"), EmbeddingsWithFixes):
        emb.token_embedding = emb.token_embedding.wrapped


model_hijack = types.SimpleNamespace(hijack=hijack, undo_hijack=undo_hijack)
