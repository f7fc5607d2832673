"""Safe loading of pickled torch checkpoints (.ckpt/.pt/.pth/.bin).

Only `torch.load(..., weights_only=True)` is used: its restricted unpickler builds tensors and
plain containers and refuses anything else *before* running it, so a malicious pickle cannot
execute code here.
"""
from __future__ import annotations

import pickle
import warnings

import torch

from merger.errors import AlloyError
from merger.io.dtypes import DTYPE_TO_NAME
from merger.paths import shown

_NESTING_KEYS = ("state_dict",)


def unwrap_state_dict(obj: object) -> dict:
    """Follow {"state_dict": {...}} nesting (at most 8 levels, a pickle can make a dict that holds
    itself) down to the tensor dict."""
    for _ in range(8):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            return obj
        obj = inner
    return {}


def tensors_only(obj: dict) -> dict[str, torch.Tensor]:
    """String-keyed dense tensors of a dtype safetensors can store; everything else (epoch, step,
    sparse or quantized tensors, complex numbers, ...) dropped."""
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
            and v.layout == torch.strided and not v.is_quantized and v.dtype in DTYPE_TO_NAME
            and v.device.type == "cpu"}


def _why(exc: BaseException) -> str:
    """The first line of an exception's text, short and escaped (torch's messages span lines)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = text if len(text) <= 160 else text[:157] + "..."
    return shown(text)


def load_ckpt_tensors(path: str, label: str = "model A") -> dict[str, torch.Tensor]:
    """The tensors of a pickled checkpoint, loaded into memory with the weights-only unpickler.
    A pickle asking for code or arbitrary objects is refused with an AlloyError; nothing runs.
    Any failure of the loader (corrupt zip, truncated pickle, odd objects) is one sentence."""
    where = f"{label} ({shown(path)})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" chatter
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise AlloyError(
                f"{where} contains code or objects that are not plain tensors; refusing to "
                "load it (convert it to .safetensors with a tool you trust, or use a .safetensors "
                "release of the model)"
            ) from None
        raise AlloyError(f"{where} is not a readable torch checkpoint ({_why(exc)})") from None
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - every loader failure is one sentence
        raise AlloyError(f"{where} is not a readable torch checkpoint (corrupt or truncated: {_why(exc)})") from None
    tensors = tensors_only(unwrap_state_dict(obj))
    if not tensors:
        raise AlloyError(f"{where} contains no tensors")
    return tensors
