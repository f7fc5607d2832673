"""Small atomic writes (recipes, history, presets, plots): temp file + fsync + rename."""
from __future__ import annotations

import os
import tempfile

from .errors import AlloyError
from .paths import shown


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()      # what open() would give a new file (mkstemp's is 0600)


def atomic_write_text(path: str, text: str, *, overwrite: bool = True) -> str:
    """Write `text` to `path` so that readers see either the old file or the complete new one.
    A failure (full disk, read-only folder) is one AlloyError naming the file; nothing is left."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_bytes(path: str, data: bytes, *, overwrite: bool = True) -> str:
    """Write `data` to `path` so that readers see either the old file or the complete new one.
    A failure (full disk, read-only folder) is one AlloyError naming the file; nothing is left."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise AlloyError(f"The folder does not exist: {shown(folder)}.")
    if os.path.exists(path) and not overwrite:
        raise AlloyError(f"{shown(path)} exists; pass --overwrite to replace it.")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise AlloyError(f"Writing {shown(path)} failed: {e.strerror or e}.") from None
        raise
    return path
