"""Float32 means float32: merges compute with TF32 (and bf16 "fast math") off.

On recent NVIDIA GPUs PyTorch may run float32 matrix products and convolutions in TF32 (a 10-bit
mantissa): convolutions by default, matrix products once a program allows it, as A1111 does at
start-up (its `devices.enable_tf32`); oneDNN may do the like on CPUs. Alloy's results must not depend
on that: the same recipe on the CPU and on a GPU agree within float32 rounding (smoothAdd's Gaussian
is a convolution; LoRA bake, merge, extract and resize are matrix products and SVDs).
`full_float32()` sets IEEE float32 while a merge computes and puts the program's settings back when
the last merge running ends (merges may overlap on threads: the settings are process-wide). It is
a context manager and a decorator.

torch ≥ 2.9 has per-backend settings (`fp32_precision`); reading the older process-wide ones after a
program used those raises, so the newer are used where they exist, the older otherwise."""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

_LOCK = threading.Lock()
_saved: list = [None]    # what the program had (see _enter), while merges run
_active = 0


def _backends() -> list:
    """The per-backend settings objects of this torch (empty before torch 2.9): matrix products on
    CUDA, cuDNN's and oneDNN's operators (their RNN settings too: a program that reads cuDNN's
    process-wide flag gets an error while conv and RNN differ)."""
    b = torch.backends
    found = [getattr(b.cuda, "matmul", None), *(getattr(b.cudnn, op, None) for op in ("conv", "rnn")),
             *(getattr(b.mkldnn, op, None) for op in ("matmul", "conv", "rnn"))]
    return [x for x in found if x is not None and hasattr(x, "fp32_precision")]


def _enter() -> list | None:
    """Set IEEE float32; what to put back (None: nothing was changed)."""
    per_backend = _backends()
    saved: list = []
    try:
        if per_backend:
            for x in per_backend:
                saved.append((x, x.fp32_precision))
                x.fp32_precision = "ieee"
            return saved
        saved = [torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32]
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False
        return saved
    except (RuntimeError, AttributeError, TypeError, ValueError):
        # a torch whose settings behave otherwise: merge with the program's settings, change nothing
        _leave(saved)
        return None


def _leave(saved: list | None) -> None:
    if not saved:
        return
    try:
        if isinstance(saved[0], tuple):
            for x, value in saved:
                x.fp32_precision = value
            return
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]
    except (RuntimeError, AttributeError, TypeError, ValueError):
        pass


@contextmanager
def full_float32():
    """IEEE float32 matrix products and convolutions inside the block."""
    global _active
    with _LOCK:
        if _active == 0:
            _saved[:] = [_enter()]
        _active += 1
    try:
        yield
    finally:
        with _LOCK:
            _active -= 1
            if _active == 0:
                _leave(_saved[0])
