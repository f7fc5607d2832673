"""Safe loading of pickled torch checkpoints (.ckpt/.pt/.pth/.bin).

Only `torch.load(..., weights_only=True)` is used: its restricted unpickler builds tensors and
plain containers and refuses anything else *before* running it, so a malicious pickle cannot
execute code here.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile

import torch

from merger.errors import AlloyError

_NESTING_KEYS = ("state_dict",)


def unwrap_state_dict(obj: object) -> dict:
    """Follow {"state_dict": {...}} nesting (possibly repeated) down to the tensor dict."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            return obj
        obj = inner
    return {}


def tensors_only(obj: dict) -> dict[str, torch.Tensor]:
    """String-keyed tensor entries of a state dict; everything else (epoch, step, ...) dropped."""
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def load_ckpt_tensors(path: str, label: str = "model A") -> dict[str, torch.Tensor]:
    """The tensors of a pickled checkpoint, loaded into memory with the weights-only unpickler.
    A pickle asking for code or arbitrary objects is refused with an AlloyError; nothing runs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" chatter
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise AlloyError(
                f"{label} ({path}) contains code or objects that are not plain tensors; refusing to "
                "load it (convert it to .safetensors with a tool you trust, or use a .safetensors "
                "release of the model)"
            ) from None
        raise AlloyError(f"{label} ({path}) is not a readable torch checkpoint ({exc})") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise AlloyError(
            f"{label} ({path}) is not a readable torch checkpoint (corrupt or truncated: {exc})"
        ) from None
    tensors = tensors_only(unwrap_state_dict(obj))
    if not tensors:
        raise AlloyError(f"{label} ({path}) contains no tensors")
    return tensors
