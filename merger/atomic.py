"""Small atomic text writes (recipes, history, presets): temp file + fsync + rename."""
from __future__ import annotations

import os
import tempfile

from .errors import AlloyError


def atomic_write_text(path: str, text: str, *, overwrite: bool = True) -> str:
    """Write `text` to `path` so that readers see either the old file or the complete new one."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise AlloyError(f"The folder does not exist: {folder}.")
    if os.path.exists(path) and not overwrite:
        raise AlloyError(f"{path} exists; pass --overwrite to replace it.")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
