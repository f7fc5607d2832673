"""safetensors header: parse and validate (pure functions over bytes), and build one for writing.

File layout: u64 little-endian N | N bytes of UTF-8 JSON | data. The JSON maps each key to
{"dtype": name, "shape": [...], "data_offsets": [begin, end]} (offsets relative to the data start
8 + N) plus an optional "__metadata__" string->string map.
"""
from __future__ import annotations

import json
import struct
from typing import NamedTuple

import torch

from merger.errors import AlloyError
from merger.io.dtypes import ITEMSIZE, NAME_TO_DTYPE

MAX_HEADER_BYTES = 100 * 1024 * 1024  # same limit as the safetensors library
MAX_DEPTH = 64                        # nesting of JSON values inside __metadata__
METADATA_KEY = "__metadata__"


class TensorInfo(NamedTuple):
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


class Entry(NamedTuple):
    """One tensor of a parsed header; `begin` is the absolute file offset of its bytes."""

    info: TensorInfo
    begin: int


class Header(NamedTuple):
    entries: dict[str, Entry]   # in data-offset order
    metadata: dict[str, str]
    data_start: int             # 8 + N


def _k(key: object) -> str:
    """A tensor key for a message: repr-escaped and at most about 100 characters."""
    text = repr(key)
    return text if len(text) <= 100 else text[:97] + "...'"


def _where(label: str, path: str) -> str:
    return f"{label} ({path})"


def read_header_length(first8: bytes, file_size: int, label: str, path: str) -> int:
    """N from the first 8 bytes; sane means 2 <= N <= min(100 MiB, file_size - 8)."""
    where = _where(label, path)
    if len(first8) < 8:
        raise AlloyError(f"{where} is too small to be a .safetensors file ({file_size} bytes)")
    (n,) = struct.unpack("<Q", first8)
    if n < 2 or n > MAX_HEADER_BYTES or n > file_size - 8:
        raise AlloyError(
            f"{where} is not a valid .safetensors file: header length {n} does not fit "
            f"a file of {file_size} bytes (corrupt or not a safetensors file)"
        )
    return n


def _no_duplicates(pairs: list) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate key {k!r}")
        seen[k] = v
    return seen


def _metadata(raw: object, where: str) -> dict[str, str]:
    """`__metadata__` as str->str; non-string values (written by lax tools) become their JSON text
    (nested at most MAX_DEPTH levels)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise AlloyError(f"{where} has a malformed header: __metadata__ is not a JSON object")
    out = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            if _depth(v) > MAX_DEPTH:
                raise AlloyError(f"{where} has a malformed header: __metadata__ entry {_k(k)} is nested "
                                 f"more than {MAX_DEPTH} levels deep")
            v = json.dumps(v)
        out[k] = v
    return out


def _depth(v: object) -> int:
    """Nesting depth of a JSON value (iterative, so no recursion limit applies)."""
    deepest, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (list, dict)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((y, d + 1) for y in (x.values() if isinstance(x, dict) else x))
    return deepest


def _entry(key: str, raw: object, where: str) -> tuple[TensorInfo, int, int]:
    """(info, begin, end) relative offsets, with dtype, shape and byte count checked."""
    if not isinstance(raw, dict):
        raise AlloyError(f"{where} has a malformed header entry for key {_k(key)}")
    name = raw.get("dtype")
    if not isinstance(name, str) or name not in NAME_TO_DTYPE:
        shown_name = repr(name) if isinstance(name, str) else f"a {type(name).__name__}"
        raise AlloyError(f"{where} uses unknown dtype {shown_name[:40]} for key {_k(key)}")
    shape = raw.get("shape")
    offs = raw.get("data_offsets")
    ok_shape = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    ok_offs = (isinstance(offs, list) and len(offs) == 2
               and all(type(o) is int for o in offs) and 0 <= offs[0] <= offs[1])
    if not (ok_shape and ok_offs):
        raise AlloyError(f"{where} has a malformed shape or data_offsets for key {_k(key)}")
    count = 1
    for d in shape:
        count *= d
    nbytes = count * ITEMSIZE[name]
    if offs[1] - offs[0] != nbytes:
        raise AlloyError(
            f"{where}: key {_k(key)} has {offs[1] - offs[0]} data bytes but dtype {name} and shape "
            f"{tuple(shape)} need {nbytes}"
        )
    return TensorInfo(key, NAME_TO_DTYPE[name], tuple(shape), nbytes), offs[0], offs[1]


def parse_header(json_bytes: bytes, file_size: int, label: str, path: str) -> Header:
    """Validate the JSON header: valid UTF-8 JSON object, known dtypes, byte counts matching
    shapes, offsets in range without overlaps, data end <= file size (else truncated)."""
    where = _where(label, path)
    try:
        raw = json.loads(json_bytes.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AlloyError(f"{where} has a corrupt header (invalid JSON: {str(exc)[:200]})") from None
    except RecursionError:
        raise AlloyError(f"{where} has a corrupt header (JSON nested too deeply)") from None
    if not isinstance(raw, dict):
        raise AlloyError(f"{where} has a corrupt header (not a JSON object)")
    data_start = 8 + len(json_bytes)
    metadata = _metadata(raw.pop(METADATA_KEY, None), where)
    spans = sorted((_entry(k, v, where) for k, v in raw.items()),
                   key=lambda s: (s[1], s[2], s[0].key))
    entries: dict[str, Entry] = {}
    prev_end, prev_key = 0, None
    for info, begin, end in spans:
        if begin < prev_end:
            raise AlloyError(f"{where} has overlapping data for keys {_k(prev_key)} and {_k(info.key)}")
        if end > begin:
            prev_end, prev_key = end, info.key
        entries[info.key] = Entry(info, data_start + begin)
    if data_start + prev_end > file_size:
        raise AlloyError(
            f"{where} is truncated: its header needs {data_start + prev_end} bytes but the file has "
            f"{file_size} (incomplete download or copy?)"
        )
    return Header(entries, metadata, data_start)


def header_json(entries: list[tuple[str, str, tuple[int, ...], int, int]],
                metadata: dict[str, str] | None) -> bytes:
    """Compact deterministic JSON: __metadata__ first (keys sorted), then tensors in the given
    order; `entries` rows are (key, dtype name, shape, begin, end) with offsets relative to data."""
    obj: dict[str, object] = {}
    if metadata:
        obj[METADATA_KEY] = {k: metadata[k] for k in sorted(metadata)}
    for key, name, shape, begin, end in entries:
        obj[key] = {"dtype": name, "shape": list(shape), "data_offsets": [begin, end]}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")
