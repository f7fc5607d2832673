"""safetensors dtype names <-> torch dtypes (data, not logic)."""
from __future__ import annotations

import torch

from merger.errors import AlloyError

# safetensors header name -> (torch attribute name, item size in bytes). Order: most common first.
_NAMES: tuple[tuple[str, str, int], ...] = (
    ("F16", "float16", 2),
    ("F32", "float32", 4),
    ("BF16", "bfloat16", 2),
    ("F64", "float64", 8),
    ("I64", "int64", 8),
    ("I32", "int32", 4),
    ("I16", "int16", 2),
    ("I8", "int8", 1),
    ("U8", "uint8", 1),
    ("BOOL", "bool", 1),
    ("F8_E4M3", "float8_e4m3fn", 1),
    ("F8_E5M2", "float8_e5m2", 1),
    ("U16", "uint16", 2),
    ("U32", "uint32", 4),
    ("U64", "uint64", 8),
)

# Only the names this torch build has (fp8 / unsigned types are recent additions).
NAME_TO_DTYPE: dict[str, torch.dtype] = {
    name: getattr(torch, attr) for name, attr, _ in _NAMES if hasattr(torch, attr)
}
DTYPE_TO_NAME: dict[torch.dtype, str] = {dt: name for name, dt in NAME_TO_DTYPE.items()}
ITEMSIZE: dict[str, int] = {name: size for name, _, size in _NAMES if name in NAME_TO_DTYPE}


def parse_dtype_name(name: str) -> torch.dtype:
    """"F16" -> torch.float16; AlloyError for a name safetensors/torch here does not know."""
    try:
        return NAME_TO_DTYPE[name]
    except (KeyError, TypeError):
        known = " ".join(NAME_TO_DTYPE)
        raise AlloyError(f"unknown tensor dtype {name!r} (known: {known})") from None


def torch_dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 -> "F16"; AlloyError for dtypes safetensors cannot store (complex, qint, ...)."""
    try:
        return DTYPE_TO_NAME[dtype]
    except KeyError:
        raise AlloyError(f"tensor dtype {dtype} cannot be stored in a .safetensors file") from None


def nbytes_of(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    """Bytes of a dense tensor: prod(shape) * itemsize (prod of () is 1: a 0-d tensor has one element)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n * ITEMSIZE[torch_dtype_name(dtype)]
