"""The file sink: streams planned tensors into an atomic safetensors writer."""
from __future__ import annotations

import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch

from .contracts import Sink
from .io import SafetensorsWriter

MIN_BUFFER = 8 << 20


class FileSink(Sink):
    """Writes every planned key, in plan order, to `path` (temp file + fsync + rename on finish).

    Two reused output buffers of `MIN_BUFFER` bytes: targets are packed one after the other into
    the current buffer (consecutive keys of one dtype are adjacent, so the engine can fill several
    with one operation); when the next key does not fit, the buffer is handed to a writer thread as
    one job once all its keys are put, and the other buffer is used. So computing and writing
    overlap and small keys cost no thread hand-off each. Targets asked for at once must fit in half
    a buffer; a key bigger than that comes alone and gets memory of its own, written as its own
    job and freed after (so memory does not hold two copies of the biggest key). `finalize` (optional) returns
    the final metadata once the merge is done (e.g. with input hashes computed in the background);
    it replaces the provisional metadata in the header, which was sized for it."""

    def __init__(self, path: str, *, overwrite: bool = False, metadata: dict | None = None, finalize=None):
        self.path, self.overwrite, self.metadata, self.finalize = path, overwrite, metadata or {}, finalize
        self.writer = None
        self.bufs: list = []
        self.pool = None
        self.jobs: list = [None, None]     # abort() may run after a begin() that failed
        self.own: deque = deque()

    def begin(self, plan) -> None:
        entries = [(kp.key, kp.out_dtype, tuple(kp.shape)) for kp in plan.items]
        reserve = 4096 + len(json.dumps(self.metadata))
        self.writer = SafetensorsWriter(self.path, entries, self.metadata, overwrite=self.overwrite,
                                        metadata_reserve=reserve)
        self.bufs = [torch.empty(MIN_BUFFER, dtype=torch.uint8) for _ in range(2)]
        self.cur, self.fill = 0, 0
        self.handed = deque()              # (buffer index, view) of targets not yet put, in order
        self.waiting = [0, 0]              # targets handed out and not yet put, per buffer
        self.done: list = [[], []]         # (key, tensor) put into each buffer, not yet written
        self.closed = [False, False]
        self.jobs = [None, None]
        self.own = deque()                 # write jobs of big keys (see target)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alloy-write")

    def _wait(self, i: int) -> None:
        job, self.jobs[i] = self.jobs[i], None
        if job is not None:
            job.result()

    def _write(self, items: list) -> None:
        for key, tensor in items:
            self.writer.write(key, tensor)

    def _submit(self, i: int) -> None:
        if self.done[i]:
            self.jobs[i] = self.pool.submit(self._write, self.done[i])
        self.done[i], self.closed[i] = [], False

    def _close(self, i: int) -> None:
        self.closed[i] = True
        if self.waiting[i] == 0:
            self._submit(i)

    def target(self, kp) -> torch.Tensor:
        n, size = _nbytes(kp), kp.out_dtype.itemsize
        if n > MIN_BUFFER // 2:                 # a big key: memory of its own, written as its own job
            self._close(self.cur)               # (after what the current buffer holds)
            self.cur ^= 1
            if self.waiting[self.cur]:
                raise RuntimeError("FileSink: more targets outstanding than one buffer holds")
            self._wait(self.cur)
            self.fill = 0
            view = torch.empty(kp.shape, dtype=kp.out_dtype)
            self.handed.append((None, view))
            return view
        off = (self.fill + size - 1) // size * size
        if off + n > self.bufs[0].numel():
            self._close(self.cur)
            self.cur ^= 1
            if self.waiting[self.cur]:
                raise RuntimeError("FileSink: more targets outstanding than one buffer holds")
            self._wait(self.cur)
            off = 0
        self.fill = off + n
        self.waiting[self.cur] += 1
        view = self.bufs[self.cur][off:off + n].view(kp.out_dtype).reshape(kp.shape)
        self.handed.append((self.cur, view))
        return view

    def put(self, kp, tensor) -> None:
        if self.handed and self.handed[0][0] is None:       # a big key (see target)
            _, view = self.handed.popleft()
            if tensor is not view:
                view.copy_(tensor)
            while len(self.own) > 1:                # at most two big keys in memory
                self.own.popleft().result()
            self.own.append(self.pool.submit(self._write, [(kp.key, view)]))
            return
        if self.handed:
            i, view = self.handed.popleft()
            if tensor is not view:
                view.copy_(tensor)
            self.waiting[i] -= 1
        else:                                   # a put without a target (not how the engine works)
            view = self.target(kp)
            self.handed.pop()
            view.copy_(tensor)
            i = self.cur
            self.waiting[i] -= 1
        self.done[i].append((kp.key, view))
        if self.closed[i] and self.waiting[i] == 0:
            self._submit(i)

    def finish(self, report) -> None:
        self._close(self.cur)
        for i in (0, 1):
            self._wait(i)
        while self.own:
            self.own.popleft().result()
        if self.finalize is not None:
            self.writer.set_metadata(self.finalize())
        report.path = self.writer.commit()
        self._shutdown()

    def abort(self) -> None:
        for job in [*self.jobs, *self.own]:
            try:
                if job is not None:
                    job.result()
            except Exception:  # the write error is not the error being reported
                pass
        if self.writer is not None:
            self.writer.abort()
        self._shutdown()

    def _shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
        self.bufs = []


def _nbytes(kp) -> int:
    n = 1
    for d in kp.shape:
        n *= int(d)
    return n * kp.out_dtype.itemsize
