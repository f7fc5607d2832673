"""The file sink: streams planned tensors into an atomic safetensors writer."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import torch

from .engine import Sink
from .io import SafetensorsWriter


class FileSink(Sink):
    """Writes every planned key, in plan order, to `path` (temp file + fsync + rename on finish).

    Two reused output buffers: the engine fills one while a writer thread writes the other, so
    computing and writing overlap. `finalize` (optional) returns the final metadata once the merge
    is done (e.g. with input hashes computed in the background); it replaces the provisional
    metadata in the header, which was sized for it."""

    def __init__(self, path: str, *, overwrite: bool = False, metadata: dict | None = None, finalize=None):
        self.path, self.overwrite, self.metadata, self.finalize = path, overwrite, metadata or {}, finalize
        self.writer = None
        self.bufs = []
        self.pending = [None, None]
        self.cur = 0
        self.pool = None

    def begin(self, plan) -> None:
        entries = [(kp.key, kp.out_dtype, tuple(kp.shape)) for kp in plan.items]
        reserve = 4096 + len(json.dumps(self.metadata))
        self.writer = SafetensorsWriter(self.path, entries, self.metadata, overwrite=self.overwrite,
                                        metadata_reserve=reserve)
        biggest = max((_nbytes(kp) for kp in plan.items), default=0)
        self.bufs = [torch.empty(biggest, dtype=torch.uint8) for _ in range(2)]
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alloy-write")

    def _wait(self, i: int) -> None:
        job, self.pending[i] = self.pending[i], None
        if job is not None:
            job.result()

    def target(self, kp) -> torch.Tensor:
        self._wait(self.cur)
        return self.bufs[self.cur][:_nbytes(kp)].view(kp.out_dtype).reshape(kp.shape)

    def put(self, kp, tensor) -> None:
        self.pending[self.cur] = self.pool.submit(self.writer.write, kp.key, tensor)
        self.cur ^= 1

    def finish(self, report) -> None:
        for i in (0, 1):
            self._wait(i)
        if self.finalize is not None:
            self.writer.set_metadata(self.finalize())
        report.path = self.writer.commit()
        self._close()

    def abort(self) -> None:
        for i in (0, 1):
            try:
                self._wait(i)
            except Exception:  # the write error is not the error being reported
                pass
        if self.writer is not None:
            self.writer.abort()
        self._close()

    def _close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
        self.bufs = []


def _nbytes(kp) -> int:
    n = 1
    for d in kp.shape:
        n *= int(d)
    return n * kp.out_dtype.itemsize
