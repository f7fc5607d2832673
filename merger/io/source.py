"""Model sources: a .safetensors file read by header + pread, or an in-memory state dict (.ckpt)."""
from __future__ import annotations

import os
import threading

import torch

from merger.errors import AlloyError
from merger.paths import check_input_file, shown
from merger.io.header import Entry, TensorInfo, parse_header, read_header_length

SAFETENSORS_EXTS = (".safetensors", ".sft")
TORCH_EXTS = (".ckpt", ".pt", ".pth", ".bin")
_HAVE_PREADV = hasattr(os, "preadv")
OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _byte_view(buffer: bytearray | torch.Tensor, nbytes: int, what: str) -> torch.Tensor:
    """The first `nbytes` of `buffer` as a flat uint8 tensor sharing its memory (no copy)."""
    if isinstance(buffer, (bytearray, memoryview)):
        if len(buffer) < nbytes:
            raise ValueError(f"buffer of {len(buffer)} bytes is too small for {what} ({nbytes} bytes)")
        if nbytes == 0:
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(buffer, dtype=torch.uint8, count=nbytes)
    if not isinstance(buffer, torch.Tensor):
        raise TypeError(f"buffer must be a bytearray or a CPU tensor, not {type(buffer).__name__}")
    if buffer.device.type != "cpu" or not buffer.is_contiguous():
        raise ValueError("buffer must be a contiguous CPU tensor")
    flat = buffer.reshape(-1)
    flat = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
    if flat.numel() < nbytes:
        raise ValueError(f"buffer of {flat.numel()} bytes is too small for {what} ({nbytes} bytes)")
    return flat[:nbytes]


def _as_tensor(raw: torch.Tensor, info: TensorInfo) -> torch.Tensor:
    """Reinterpret `nbytes` of uint8 as info.dtype with info.shape (a view, no copy)."""
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    return raw.view(info.dtype).reshape(info.shape)


def _read_copy(fd: int, view: memoryview) -> int:
    """Fallback for platforms without readv: one bounded os.read, copied into `view`."""
    data = os.read(fd, min(len(view), 1 << 24))
    view[: len(data)] = data
    return len(data)


class Source:
    """One model file, opened from its header only. Subclasses implement `_read_into`."""

    path: str
    label: str
    metadata: dict[str, str]
    _infos: dict[str, TensorInfo]

    def keys(self) -> list[str]:
        """Keys in data-offset order (reading in this order is sequential on disk)."""
        return list(self._infos)

    def info(self, key: str) -> TensorInfo:
        try:
            return self._infos[key]
        except KeyError:
            raise AlloyError(f"{self.label} ({shown(self.path)}) has no tensor {key!r}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._infos

    def read(self, key: str, buffer: bytearray | torch.Tensor | None = None, *,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor `key` in its native dtype and shape on the CPU. With `buffer` (or `out`: a
        contiguous CPU tensor / bytearray holding >= nbytes) the result is a view over its first
        nbytes; without, it lives in freshly allocated memory owned by the result."""
        info = self.info(key)
        target = buffer if buffer is not None else out
        if target is None:
            raw = torch.empty(info.nbytes, dtype=torch.uint8)
        else:
            raw = _byte_view(target, info.nbytes, f"{key!r}")
        self._read_into(info, raw)
        return _as_tensor(raw, info)

    def _read_into(self, info: TensorInfo, raw: torch.Tensor) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file; reads afterwards raise AlloyError. Idempotent."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, label={self.label!r}, keys={len(self._infos)})"


class SafetensorsSource(Source):
    """A .safetensors file: header parsed once, tensors read with os.pread on a kept descriptor
    (thread-safe, no mmap, so RSS only holds what the caller keeps)."""

    def __init__(self, path: str, label: str, fd: int, entries: dict[str, Entry],
                 metadata: dict[str, str]):
        self.path, self.label, self.metadata = path, label, metadata
        self._fd = fd
        self._begin = {k: e.begin for k, e in entries.items()}
        self._infos = {k: e.info for k, e in entries.items()}
        self._lock = threading.Lock()

    def _read_into(self, info: TensorInfo, raw: torch.Tensor) -> None:
        fd = self._fd
        if fd < 0:
            raise AlloyError(f"{self.label} ({shown(self.path)}) was closed before reading {info.key!r}")
        view = memoryview(raw.numpy()) if info.nbytes else memoryview(b"")
        pos, done = self._begin[info.key], 0
        while done < info.nbytes:
            got = self._pread_into(fd, view[done:], pos + done)
            if got <= 0:
                raise AlloyError(
                    f"{self.label} ({shown(self.path)}) ended early while reading {info.key!r} "
                    "(was the file changed or truncated while open?)"
                )
            done += got

    def _pread_into(self, fd: int, view: memoryview, pos: int) -> int:
        """Positional read into `view` (no copy): os.preadv where it exists (POSIX, thread-safe
        without locking); elsewhere (Windows) lseek + readv under the source's lock."""
        if _HAVE_PREADV:
            return os.preadv(fd, [view], pos)
        with self._lock:
            os.lseek(fd, pos, os.SEEK_SET)
            return os.readv(fd, [view]) if hasattr(os, "readv") else _read_copy(fd, view)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class MemorySource(Source):
    """Tensors already in memory (a .ckpt loaded with weights_only); reads return copies."""

    def __init__(self, path: str, label: str, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None):
        self.path, self.label, self.metadata = path, label, dict(metadata or {})
        self._tensors = tensors
        self._infos = {
            k: TensorInfo(k, t.dtype, tuple(t.shape), t.numel() * t.element_size())
            for k, t in tensors.items()
        }

    def _read_into(self, info: TensorInfo, raw: torch.Tensor) -> None:
        if self._tensors is None:
            raise AlloyError(f"{self.label} ({shown(self.path)}) was closed before reading {info.key!r}")
        if info.nbytes:
            _as_tensor(raw, info).copy_(self._tensors[info.key])

    def close(self) -> None:
        self._tensors = None


def _check_file(path: str, label: str) -> None:
    """A regular file (no folder, device, FIFO or /proc link), else one sentence naming it."""
    check_input_file(path, label)


def _read_at(fd: int, n: int, pos: int) -> bytes:
    """Up to n bytes at pos (header reads at open time, before the fd is shared)."""
    if hasattr(os, "pread"):
        return os.pread(fd, n, pos)
    os.lseek(fd, pos, os.SEEK_SET)
    return os.read(fd, n)


def open_safetensors(path: str, label: str = "model A") -> SafetensorsSource:
    """Open a .safetensors file from its header; every structural problem is one AlloyError."""
    _check_file(path, label)
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as exc:
        raise AlloyError(f"{label} ({shown(path)}) cannot be opened: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        n = read_header_length(_read_at(fd, 8, 0), size, label, shown(path))
        header = parse_header(_read_at(fd, n, 8), size, label, shown(path))
    except OSError as exc:
        os.close(fd)
        raise AlloyError(f"{label} ({shown(path)}) cannot be read: {exc.strerror or exc}") from None
    except BaseException:
        os.close(fd)
        raise
    return SafetensorsSource(path, label, fd, header.entries, header.metadata)


def open_source(path: str, label: str = "model A") -> Source:
    """Open a model file by extension: .safetensors/.sft from the header; .ckpt/.pt/.pth/.bin
    through the safe (weights-only) torch loader into memory."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in SAFETENSORS_EXTS:
        return open_safetensors(path, label)
    if ext in TORCH_EXTS:
        from merger.io.ckpt import load_ckpt_tensors

        _check_file(path, label)
        return MemorySource(path, label, load_ckpt_tensors(path, label))
    _check_file(path, label)
    raise AlloyError(
        f"{label} ({shown(path)}) has an unsupported extension {ext or '(none)'!r}; "
        "use .safetensors, .ckpt, .pt, .pth or .bin"
    )


__all__ = ["Source", "SafetensorsSource", "MemorySource", "TensorInfo", "open_source",
           "open_safetensors"]
