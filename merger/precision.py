"""Float32 means float32: merges compute with TF32 off.

On recent NVIDIA GPUs PyTorch may run float32 matrix products and convolutions in TF32 (a 10-bit
mantissa): convolutions by default (`torch.backends.cudnn.allow_tf32`), matrix products once a
program allows it, as A1111 does at start-up (its `devices.enable_tf32`). Alloy's results must not
depend on that: the same recipe on the CPU and on a GPU agree within float32 rounding (smoothAdd's
Gaussian is a convolution; LoRA bake, merge, extract and resize are matrix products and SVDs).
`full_float32()` turns TF32 off while a merge computes and puts the program's settings back when
the last merge running ends (merges may overlap on threads: the settings are process-wide). It is
a context manager and a decorator."""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

_LOCK = threading.Lock()
_saved: list = []        # the program's (matmul precision, cudnn.allow_tf32) while merges run
_active = 0


@contextmanager
def full_float32():
    """Float32 matrix products and convolutions in full float32 inside the block."""
    global _active
    with _LOCK:
        if _active == 0:
            _saved[:] = [torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32]
            torch.set_float32_matmul_precision("highest")
            torch.backends.cudnn.allow_tf32 = False
        _active += 1
    try:
        yield
    finally:
        with _LOCK:
            _active -= 1
            if _active == 0:
                torch.set_float32_matmul_precision(_saved[0])
                torch.backends.cudnn.allow_tf32 = _saved[1]
