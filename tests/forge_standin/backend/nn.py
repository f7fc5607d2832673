"""Stand-ins of Forge's component modules (backend/nn/*.py, backend/operations*.py), built as real
torch module trees named like the loaded state dicts:
  - `component(sd, dtype)`: a tree whose names are the state dict's keys (2-D weights nn.Linear,
    4-D nn.Conv2d, like tests/webui_standin/tinysd.build_model), in the storage dtype;
  - `IntegratedCLIP`: `transformer` (HF CLIPTextModel names, `position_ids` a non-persistent
    buffer as in transformers 4.46), `logit_scale`, and `transformer.text_projection`, a Forge
    Linear that keeps `weight=None` and a `dummy` Parameter when the file has none (SD1);
  - `ForgeParams4bit` / `ParameterGGUF`: quantised Parameters (bitsandbytes nf4/fp4, GGUF)."""
import torch

from tests.webui_standin import tinysd


def component(sd: dict, dtype: torch.dtype) -> torch.nn.Module:
    """(Empty for a component the file lacks, e.g. the VAE of a bare Flux transformer file, which
    Forge takes from a separately chosen VAE file.)"""
    if not sd:
        return torch.nn.Module()
    return tinysd.build_model([(k, tuple(v.shape), v.dtype, "x") for k, v in sd.items()], dtype=dtype)


class UnloadedLinear(torch.nn.Module):
    """ForgeOperations.Linear before _load_from_state_dict saw its weight."""

    def __init__(self, dtype):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1, dtype=dtype), requires_grad=False)
        self.weight = None
        self.scale_weight = None
        self.bias = None


class IntegratedCLIP(torch.nn.Module):
    def __init__(self, sd: dict, dtype: torch.dtype, n_positions: int = 77):
        super().__init__()
        body = {k[len("transformer."):]: v for k, v in sd.items()
                if k.startswith("transformer.") and not k.endswith("position_ids")}
        self.transformer = component(body, dtype)
        emb = getattr(getattr(self.transformer, "text_model", None), "embeddings", None)
        if emb is not None:
            emb.register_buffer("position_ids", torch.arange(n_positions).expand((1, -1)), persistent=False)
        if not hasattr(self.transformer, "text_projection"):
            self.transformer.text_projection = UnloadedLinear(dtype)
        self.logit_scale = torch.nn.Parameter(torch.tensor(4.6055), requires_grad=False)


class ForgeParams4bit(torch.nn.Parameter):
    bnb_quantized = True


class ParameterGGUF(torch.nn.Parameter):
    gguf_cls = "Q8_0"


def quantise(module: torch.nn.Module, kind: str) -> int:
    """Replace every 2-D weight of `module` by a quantised Parameter of `kind` ("nf4" or "gguf")."""
    cls = ForgeParams4bit if kind == "nf4" else ParameterGGUF
    n = 0
    for m in module.modules():
        w = m._parameters.get("weight")
        if w is not None and w.dim() == 2:
            m._parameters["weight"] = cls(w.detach().to(torch.uint8), requires_grad=False)
            n += 1
    return n
