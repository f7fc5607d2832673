"""The file sink: streams planned tensors into an atomic safetensors writer."""
from __future__ import annotations

import json

import torch

from .engine import Sink
from .io import SafetensorsWriter


class FileSink(Sink):
    """Writes every planned key, in plan order, to `path` (temp file + fsync + rename on finish).

    `finalize` (optional) returns the final metadata once the merge is done (e.g. with input hashes
    that were computed in the background); it replaces the provisional metadata in the header."""

    def __init__(self, path: str, *, overwrite: bool = False, metadata: dict | None = None, finalize=None):
        self.path, self.overwrite, self.metadata, self.finalize = path, overwrite, metadata or {}, finalize
        self.writer = None
        self.buf = None

    def begin(self, plan) -> None:
        entries = [(kp.key, kp.out_dtype, tuple(kp.shape)) for kp in plan.items]
        reserve = 4096 + len(json.dumps(self.metadata))
        self.writer = SafetensorsWriter(self.path, entries, self.metadata, overwrite=self.overwrite,
                                        metadata_reserve=reserve)
        biggest = max((_nbytes(kp) for kp in plan.items), default=0)
        self.buf = torch.empty(biggest, dtype=torch.uint8)

    def target(self, kp) -> torch.Tensor:
        n = _nbytes(kp)
        return self.buf[:n].view(kp.out_dtype).reshape(kp.shape)

    def put(self, kp, tensor) -> None:
        self.writer.write(kp.key, tensor)

    def finish(self, report) -> None:
        if self.finalize is not None:
            self.writer.set_metadata(self.finalize())
        report.path = self.writer.commit()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _nbytes(kp) -> int:
    n = 1
    for d in kp.shape:
        n *= int(d)
    return n * kp.out_dtype.itemsize
