"""Atomic, streaming .safetensors writer.

The header (all shapes and dtypes are known up front) is written first into a temp file in the
target folder, padded with spaces so the metadata can be replaced before commit; tensors are
appended front to back in the order given; commit = flush, fsync, os.replace over the target,
fsync the folder. A crash or kill at any moment leaves either no file or the old file intact.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import struct

import torch

from merger.errors import AlloyError
from merger.io.dtypes import nbytes_of, torch_dtype_name
from merger.io.header import METADATA_KEY, header_json
from merger.paths import shown

FREE_SPACE_MARGIN = 16 * 1024 * 1024
TEMP_TAG = ".alloy-tmp-"

Row = tuple[str, str, tuple[int, ...], int, int]   # key, dtype name, shape, begin, end


def round_up8(n: int) -> int:
    """Smallest multiple of 8 >= n (keeps the data start 8-byte aligned: 8 + N ≡ 0 mod 8)."""
    return (n + 7) // 8 * 8


def layout_rows(entries: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> tuple[list[Row], int]:
    """Contiguous data offsets from 0 in the given order: begin_i = end_{i-1}, end_i = begin_i +
    nbytes_i. Returns (rows, data size). Keys must be unique non-empty strings."""
    rows: list[Row] = []
    seen: set[str] = set()
    pos = 0
    for key, dtype, shape in entries:
        if not isinstance(key, str) or not key or key == METADATA_KEY:
            raise AlloyError(f"invalid tensor name {key!r} for a .safetensors file")
        if key in seen:
            raise AlloyError(f"tensor name {key!r} appears twice in the output")
        seen.add(key)
        shape = tuple(int(d) for d in shape)
        n = nbytes_of(dtype, shape)
        rows.append((key, torch_dtype_name(dtype), shape, pos, pos + n))
        pos += n
    return rows, pos


def check_metadata(md: dict | None) -> dict[str, str]:
    """Metadata must be a str -> str map (the safetensors format's rule)."""
    md = dict(md or {})
    for k, v in md.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise AlloyError(f"metadata entry {k!r} must map a string to a string (got {type(v).__name__})")
    return md


def _pid_alive(pid: int) -> bool:
    """POSIX: signal 0 probes without touching the process. Elsewhere (on Windows os.kill
    would terminate it) report alive, so temp files are never removed there."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                       # alive, owned by someone else
    return True


def remove_stale_temps(folder: str, name: str) -> list[str]:
    """Delete temp files left for `name` by writers whose process is gone (killed mid-save)."""
    pattern = re.compile(re.escape(f".{name}{TEMP_TAG}") + r"(\d+)-[0-9a-f]+$")
    removed = []
    for entry in os.listdir(folder):
        m = pattern.match(entry)
        if not m or int(m.group(1)) == os.getpid():
            continue
        if _pid_alive(int(m.group(1))):
            continue                      # still running (maybe saving right now)
        try:
            os.unlink(os.path.join(folder, entry))
            removed.append(entry)
        except OSError:
            pass
    return removed


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_target(path: str, overwrite: bool) -> str:
    """Folder exists and is writable; an existing target only with overwrite. Returns the folder."""
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise AlloyError(f"output folder {shown(folder)} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AlloyError(f"output folder {shown(folder)} is not writable")
    if os.path.isdir(path):
        raise AlloyError(f"output path {shown(path)} is a folder")
    if os.path.lexists(path) and not overwrite:
        raise AlloyError(f"output file {shown(path)} exists; pass --overwrite to replace it")
    return folder


def _check_space(folder: str, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed + FREE_SPACE_MARGIN:
        mib = 1024 * 1024
        raise AlloyError(
            f"not enough free disk space in {shown(folder)}: the output needs {needed / mib:.1f} MiB "
            f"(+{FREE_SPACE_MARGIN // mib} MiB margin) but only {free / mib:.1f} MiB are free"
        )


# Start the kernel's writeback every this many bytes (see SafetensorsWriter._start_writeback).
WRITEBACK_STEP = 128 << 20


class SafetensorsWriter:
    """Write `entries` (key, dtype, shape) in order to `path`, atomically. See module doc."""

    def __init__(self, path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None, *, overwrite: bool = False,
                 metadata_reserve: int = 65536):
        self.path = os.path.abspath(os.fspath(path))
        self.overwrite = overwrite
        folder = check_target(self.path, overwrite)
        self._rows, self.data_size = layout_rows(list(entries))
        self.metadata = check_metadata(metadata)
        base = len(header_json(self._rows, None)) + max(0, int(metadata_reserve))
        self.header_size = round_up8(max(base, len(header_json(self._rows, self.metadata))))
        _check_space(folder, 8 + self.header_size + self.data_size)
        remove_stale_temps(folder, os.path.basename(self.path))
        name = f".{os.path.basename(self.path)}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}"
        self.temp_path = os.path.join(folder, name)
        self._next = 0
        self._written_back = 0
        self._done = False
        try:
            fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise AlloyError(f"cannot create a file in {shown(folder)}: {exc.strerror}") from None
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._guard(lambda: self._file.write(struct.pack("<Q", self.header_size)
                                             + self._header_bytes()))

    # -- helpers -------------------------------------------------------------------------------
    def _header_bytes(self) -> bytes:
        raw = header_json(self._rows, self.metadata)
        if len(raw) > self.header_size:
            raise AlloyError(
                f"metadata for {shown(self.path)} is too large ({len(raw)} header bytes; "
                f"room for {self.header_size})"
            )
        return raw + b" " * (self.header_size - len(raw))

    def _guard(self, action):
        """Run a file operation; an OSError (disk full, I/O error) aborts with an AlloyError."""
        try:
            return action()
        except OSError as exc:
            self.abort()
            raise AlloyError(f"writing {shown(self.path)} failed: {exc.strerror or exc}") from None

    def _check_open(self) -> None:
        if self._done:
            raise AlloyError(f"the writer for {shown(self.path)} is already closed")

    def _rewrite_at(self, pos: int, raw: bytes) -> None:
        """Overwrite bytes at `pos` and return to the end (portable: no os.pwrite)."""
        end = self._file.tell()
        self._file.seek(pos)
        self._file.write(raw)
        self._file.seek(end)

    @property
    def keys(self) -> list[str]:
        return [r[0] for r in self._rows]

    @property
    def written(self) -> int:
        return self._next

    # -- API -------------------------------------------------------------------------------------
    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Append the next entry's bytes; `key`, dtype and shape must match entries[written]."""
        self._check_open()
        if self._next >= len(self._rows):
            raise ValueError(f"all {len(self._rows)} tensors are already written; got {key!r}")
        want, name, shape, begin, end = self._rows[self._next]
        if key != want:
            raise ValueError(f"tensors must be written in entries order: expected {want!r}, got {key!r}")
        if torch_dtype_name(tensor.dtype) != name or tuple(tensor.shape) != shape:
            raise ValueError(
                f"{key!r}: got {tensor.dtype} {tuple(tensor.shape)}, the header says {name} {shape}"
            )
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if not t.is_contiguous():
            t = t.contiguous()
        if end > begin:
            data = memoryview(t.reshape(-1).view(torch.uint8).numpy())
            self._guard(lambda: self._file.write(data))
            if end - self._written_back >= WRITEBACK_STEP:
                self._guard(lambda: self._start_writeback(end))
        self._next += 1

    def _start_writeback(self, end: int) -> None:
        """Ask the kernel to start writing what is written so far (asynchronously), so the disk
        works while the merge computes instead of all at once in the final fsync."""
        if hasattr(os, "posix_fadvise"):
            self._file.flush()
            base = 8 + self.header_size
            os.posix_fadvise(self._file.fileno(), base + self._written_back, end - self._written_back,
                             os.POSIX_FADV_DONTNEED)
        self._written_back = end

    def set_metadata(self, md: dict[str, str]) -> None:
        """Replace the metadata (any time before commit); it must fit in the reserved header."""
        self._check_open()
        old, self.metadata = self.metadata, check_metadata(md)
        try:
            raw = self._header_bytes()
        except AlloyError:
            self.metadata = old
            raise
        self._guard(lambda: self._rewrite_at(8, raw))

    def commit(self) -> str:
        """Check completeness, fsync, rename over the target, fsync the folder; returns the path."""
        self._check_open()
        if self._next != len(self._rows):
            n = len(self._rows)
            self.abort()
            raise AlloyError(f"only {self._next} of {n} tensors were written to {shown(self.path)}; not saved")

        def finish() -> None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

        self._guard(finish)
        if not self.overwrite and os.path.lexists(self.path):
            self.abort()
            raise AlloyError(f"output file {shown(self.path)} exists; pass --overwrite to replace it")
        self._guard(lambda: os.replace(self.temp_path, self.path))
        self._done = True
        _fsync_dir(os.path.dirname(self.path))
        return self.path

    def abort(self) -> None:
        """Close and delete the temp file; idempotent, never raises."""
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self.temp_path)
        except OSError:
            pass

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()                 # no-op after commit

    def __del__(self) -> None:
        if getattr(self, "_file", None) is not None:
            self.abort()


def save_state_dict(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                    overwrite: bool = False) -> str:
    """Write a whole dict of tensors atomically (in dict order); returns the final path."""
    entries = [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()]
    with SafetensorsWriter(path, entries, metadata, overwrite=overwrite, metadata_reserve=0) as w:
        for k, t in tensors.items():
            w.write(k, t)
        return w.commit()
