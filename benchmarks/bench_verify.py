"""Compare two .safetensors files key by key without mapping them (pread into fresh small buffers),
so the benchmark harness itself stays light and never touches the measured tools' memory profile.

    max_abs_diff = max over common float keys of max |fp32(x[k]) - fp32(y[k])|
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    end: int


@dataclass
class Comparison:
    keys_compared: int = 0
    max_abs_diff: float = 0.0
    worst_key: str = ""
    keys_over_tol: int = 0
    only_in_ref: list[str] = field(default_factory=list)
    only_in_other: list[str] = field(default_factory=list)
    dtype_or_shape_mismatch: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.keys_compared} keys, max |Δ| {self.max_abs_diff:.3g}"]
        if self.keys_over_tol:
            parts.append(f"{self.keys_over_tol} keys over tol (worst {self.worst_key})")
        if self.only_in_ref or self.only_in_other:
            parts.append(f"{len(self.only_in_ref)} keys only in ref, {len(self.only_in_other)} only in other")
        if self.dtype_or_shape_mismatch:
            parts.append(f"{len(self.dtype_or_shape_mismatch)} dtype/shape mismatches")
        return "; ".join(parts)


def read_header(path: str) -> dict[str, Entry]:
    """Parse a safetensors header: 8-byte little-endian length, JSON, then the data section."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    start = 8 + n
    return {
        k: Entry(v["dtype"], tuple(v["shape"]), start + v["data_offsets"][0], start + v["data_offsets"][1])
        for k, v in header.items() if k != "__metadata__"
    }


def read_tensor(fd: int, e: Entry) -> torch.Tensor:
    raw = bytearray(e.end - e.begin)
    view = memoryview(raw)
    got = 0
    while got < len(raw):
        n = os.preadv(fd, [view[got:]], e.begin + got)
        if n <= 0:
            raise OSError(f"short read at offset {e.begin + got}")
        got += n
    if not raw:
        return torch.empty(e.shape, dtype=_DTYPES[e.dtype])
    return torch.frombuffer(raw, dtype=_DTYPES[e.dtype]).reshape(e.shape)


def compare_files(ref_path: str, other_path: str, tol: float = 2e-3) -> Comparison:
    """Key-by-key comparison of `other` against `ref` (tol: |Δ| above which a key is counted)."""
    ref, other = read_header(ref_path), read_header(other_path)
    c = Comparison(only_in_ref=sorted(set(ref) - set(other)), only_in_other=sorted(set(other) - set(ref)))
    fa, fb = os.open(ref_path, os.O_RDONLY), os.open(other_path, os.O_RDONLY)
    try:
        for key in sorted(set(ref) & set(other), key=lambda k: ref[k].begin):
            ea, eb = ref[key], other[key]
            if ea.dtype != eb.dtype or ea.shape != eb.shape:
                c.dtype_or_shape_mismatch.append(key)
                continue
            ta, tb = read_tensor(fa, ea), read_tensor(fb, eb)
            c.keys_compared += 1
            if ta.numel() == 0:
                continue
            d = float((ta.double() - tb.double()).abs().max()) if ta.is_floating_point() else float(
                (ta != tb).any())
            if d > c.max_abs_diff:
                c.max_abs_diff, c.worst_key = d, key
            if d > tol:
                c.keys_over_tol += 1
    finally:
        os.close(fa)
        os.close(fb)
    return c
