"""Heavy per-key kernels in worker processes (smoothAdd: SciPy's filters hold the GIL, so threads
would not help). Keys are computed out of order and delivered to the sink in plan order."""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor

import torch

# Below this many merged elements the pool's start-up (spawned interpreters importing torch) costs
# more than it saves.
MIN_ELEMENTS = 1 << 22


def worker_count() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def wanted(plan, work) -> bool:
    """Use worker processes for this plan?"""
    if not plan.method.heavy or worker_count() < 2:
        return False
    n = 0
    for kp in work:
        if kp.action == "merge":
            n += torch.Size(kp.shape).numel()
    return n >= MIN_ELEMENTS


def _init() -> None:
    torch.set_num_threads(1)


def _work(spec: tuple, kp, tensors: dict) -> torch.Tensor:
    from .arch import get_arch
    from .engine import merge_whole
    from .methods import get_method

    mode, calc, compute, gamma, adjust, arch_name, stats = spec
    res = merge_whole(get_method(mode, calc), kp, tensors, compute=compute, gamma=gamma, adjust=adjust,
                      arch=get_arch(arch_name), stats=stats)
    return res.to(kp.out_dtype)


class KeyPool:
    """Runs merge keys of `plan` on worker processes; `results()` yields them back in order."""

    def __init__(self, plan, workers: int | None = None):
        self.workers = workers or worker_count()
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init)
        r = plan.recipe
        self.spec = (r.mode, r.calc, plan.compute_dtype, r.gamma, plan.adjust, plan.arch.name,
                     getattr(plan, "stats", None))
        self.queue: deque = deque()

    def add(self, kp, tensors: dict, merge: bool, plain=None) -> None:
        """Queue one key: merged on a worker, or (plain) a ready tensor. Inputs are copied, since
        the engine reuses its read buffers."""
        if merge:
            item = self.pool.submit(_work, self.spec, kp, {s: t.clone() for s, t in tensors.items()})
        else:
            item = plain.clone()
        self.queue.append((kp, item))

    def ready(self, drain: bool = False):
        """Yield (kp, tensor) in plan order: all when draining, else while the queue is too long
        or its head is done."""
        while self.queue:
            kp, item = self.queue[0]
            if isinstance(item, Future) and not drain and len(self.queue) <= 2 * self.workers \
                    and not item.done():
                return
            self.queue.popleft()
            yield kp, item.result() if isinstance(item, Future) else item

    def close(self) -> None:
        for _, item in self.queue:
            if isinstance(item, Future):
                item.cancel()
        self.queue.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
