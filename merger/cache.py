"""A RAM (optionally VRAM) cache of source tensors, so sweeps re-read nothing from disk.

`SourceCache.open(path)` returns a `CachedSource` with the interface of `merger.io.Source`
(keys / info / __contains__ / read). Entries are keyed by (realpath, size, mtime_ns, tensor key):
a file changed on disk is a different file. Eviction is least-recently-used within a byte budget,
except for the files of the merge in progress (`hold`): a sweep reads the same files in the same
order at every merge, and LRU would evict each tensor just before it is needed again (with sources
larger than the budget nothing would ever hit). Their tensors stay; what no longer fits is read
from the file each time, so a sweep hits the cache for the budget's worth of tensors.
Cached tensors are shared, never copied on read: callers (the engine's kernels) must not modify
what `read` returns without a buffer (DESIGN.md: kernels are pure).

The same budget also holds *derived* tensors (`SourceCache.derived(scope)` → `DerivedStore`): the
alpha-independent intermediate results of the multi-model merges (a trimmed, elected task vector),
keyed by the exact files merged and `Plan.derived_key`, so an alpha sweep costs one fused add per
key instead of a re-trim. They are evicted with everything else, least recently used first."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable, NamedTuple

import torch

from .errors import AlloyError
from .paths import shown


_DERIVED = "derived"


class FileId(NamedTuple):
    realpath: str
    size: int
    mtime_ns: int


def file_id(path: str) -> FileId:
    """(realpath, size, mtime_ns) of `path`; AlloyError when it does not exist."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as e:
        raise AlloyError(f"Cannot read {shown(path)}: {e.strerror}.") from None
    return FileId(real, st.st_size, st.st_mtime_ns)


def _default_opener(path: str, label: str):
    from .io import open_source
    return open_source(path, label)


class CacheStats(NamedTuple):
    bytes: int
    budget: int
    entries: int
    files: int
    hits: int
    misses: int
    derived_hits: int = 0
    derived_misses: int = 0


class SourceCache:
    """LRU byte-budgeted cache of tensors of opened model files (thread-safe)."""

    def __init__(self, budget_bytes: int, *, opener: Callable | None = None,
                 gpu_device: str | None = None, gpu_reserve_bytes: int = 2 << 30):
        self._budget = max(0, int(budget_bytes))
        self._opener = opener or _default_opener
        self._gpu = gpu_device
        self._gpu_reserve = gpu_reserve_bytes
        self._lock = threading.RLock()
        self._sources: dict[FileId, object] = {}
        self._lru: OrderedDict[tuple[FileId, str], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._derived_hits = 0
        self._derived_misses = 0
        self._held: frozenset = frozenset()
        self._unheld = 0            # entries not of the held files (evictable during a merge)

    def hold(self, fids) -> None:
        """The files of the merge now starting: their tensors (and derived tensors of exactly these
        files) are not evicted for one another; tensors of other files are, least recent first."""
        with self._lock:
            self._held = frozenset(fids)
            self._unheld = sum(1 for ck in self._lru if not self._is_held(ck))

    def _is_held(self, ck: tuple) -> bool:
        fid, key = ck
        if fid == _DERIVED:
            return bool(self._held) and set(key[0]) <= self._held
        return fid in self._held

    # ---- files ---------------------------------------------------------------------------
    def open(self, path: str, label: str = "model A") -> "CachedSource":
        """A cached view of `path`; the underlying file stays open until it changes or clear()."""
        fid = file_id(path)
        with self._lock:
            src = self._sources.get(fid)
            if src is None:
                self._forget_path(fid.realpath)
                src = self._opener(path, label)
                self._sources[fid] = src
        return CachedSource(self, fid, src, path, label)

    def _forget_path(self, realpath: str) -> None:
        """Drop every file id (and its tensors) of an older version of `realpath`."""
        for old in [f for f in self._sources if f.realpath == realpath]:
            for k in [k for k in self._lru if k[0] == old or (k[0] == _DERIVED and old in k[1][0])]:
                self._drop(k)
            src = self._sources.pop(old)
            close = getattr(src, "close", None)
            if close:
                close()

    # ---- tensors -------------------------------------------------------------------------
    def get(self, fid: FileId, key: str, src) -> torch.Tensor:
        """The tensor `key` of file `fid`, from the cache or read once from `src`."""
        with self._lock:
            t = self._lru.get((fid, key))
            if t is not None:
                self._lru.move_to_end((fid, key))
                self._hits += 1
                return t
            self._misses += 1
        t = src.read(key)
        with self._lock:
            self._store((fid, key), t)
        return t

    def peek(self, fid: FileId, key: str) -> torch.Tensor | None:
        """The cached tensor, or None when it is not in the cache (nothing is read or counted)."""
        with self._lock:
            return self._lru.get((fid, key))

    # ---- derived tensors --------------------------------------------------------------------
    def derived(self, scope: tuple) -> "DerivedStore":
        """A store of derived tensors for merges of exactly the files in `scope` (their FileIds)."""
        return DerivedStore(self, tuple(scope))

    def get_derived(self, dkey: tuple) -> torch.Tensor | None:
        with self._lock:
            t = self._lru.get((_DERIVED, dkey))
            if t is None:
                self._derived_misses += 1
                return None
            self._lru.move_to_end((_DERIVED, dkey))
            self._derived_hits += 1
            return t

    def put_derived(self, dkey: tuple, t: torch.Tensor) -> None:
        """Keep `t` (never modified afterwards: readers share it) within the budget."""
        if t.device.type != "cpu" and not self._gpu:
            t = t.to("cpu")
        with self._lock:
            self._store((_DERIVED, dkey), t)

    def _store(self, ck: tuple, t: torch.Tensor) -> None:
        n = _nbytes(t)
        if n > self._budget or ck in self._lru:
            return
        self._evict(self._budget - n, keep_held=True)
        if self._bytes + n > self._budget:
            return                  # full of the held files' tensors: this one is read again next time
        t = self._maybe_gpu(t)
        self._lru[ck] = t
        self._bytes += n
        self._unheld += not self._is_held(ck)

    def _drop(self, ck: tuple) -> None:
        self._bytes -= _nbytes(self._lru.pop(ck))
        self._unheld -= not self._is_held(ck)

    def _maybe_gpu(self, t: torch.Tensor) -> torch.Tensor:
        """Move to the cache GPU when free VRAM exceeds the tensor + a reserve."""
        if not self._gpu or not torch.cuda.is_available():
            return t
        try:
            free, _ = torch.cuda.mem_get_info(torch.device(self._gpu))
        except Exception:
            return t
        return t.to(self._gpu) if free > _nbytes(t) + self._gpu_reserve else t

    def _evict(self, limit: int, keep_held: bool = False) -> None:
        limit = max(0, limit)
        if self._bytes <= limit:
            return
        if not keep_held or not self._held:
            while self._lru and self._bytes > limit:
                self._drop(next(iter(self._lru)))
            return
        if not self._unheld:
            return
        for ck in [ck for ck in self._lru if not self._is_held(ck)]:
            self._drop(ck)
            if self._bytes <= limit:
                return

    def set_budget(self, budget_bytes: int) -> None:
        with self._lock:
            self._budget = max(0, int(budget_bytes))
            self._evict(self._budget)

    def clear(self) -> None:
        """Drop every cached tensor and close every file."""
        with self._lock:
            self._lru.clear()
            self._bytes = self._unheld = 0
            for src in self._sources.values():
                close = getattr(src, "close", None)
                if close:
                    close()
            self._sources.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._bytes, self._budget, len(self._lru), len(self._sources),
                              self._hits, self._misses, self._derived_hits, self._derived_misses)


class DerivedStore:
    """Derived tensors of merges of one set of files (`scope`): `get(key)` → tensor or None,
    `put(key, tensor)`. Keys are `Plan.derived_key(...)` tuples."""

    def __init__(self, cache: SourceCache, scope: tuple):
        self._cache, self.scope = cache, scope

    def get(self, key: tuple) -> torch.Tensor | None:
        return self._cache.get_derived((self.scope, key))

    def put(self, key: tuple, t: torch.Tensor) -> None:
        self._cache.put_derived((self.scope, key), t)


class CachedSource:
    """`merger.io.Source` interface over a SourceCache entry.

    `shared_tensors`: read() without a buffer returns the cached tensor itself (never to be
    modified), so readers should not pass buffers: that would only add a copy."""

    shared_tensors = True

    def __init__(self, cache: SourceCache, fid: FileId, src, path: str, label: str):
        self._cache, self._src, self.fid = cache, src, fid
        self.path, self.label = path, label
        self.metadata = getattr(src, "metadata", {})

    def keys(self) -> list[str]:
        return self._src.keys()

    def info(self, key: str):
        if key not in self._src:
            raise AlloyError(f"{self.label} ({shown(self.path)}) has no tensor {key!r}")
        return self._src.info(key)

    def __contains__(self, key: object) -> bool:
        return key in self._src

    def __len__(self) -> int:
        return len(self._src.keys())

    def read(self, key: str, buffer=None, *, out=None) -> torch.Tensor:
        """The cached tensor (shared: do not modify it); with `buffer`/`out`, a copy in it."""
        if key not in self._src:
            raise AlloyError(f"{self.label} ({shown(self.path)}) has no tensor {key!r}")
        t = self._cache.get(self.fid, key, self._src)
        target = buffer if buffer is not None else out
        if target is None:
            return t
        if isinstance(target, torch.Tensor) and target.dtype == t.dtype and target.shape == t.shape:
            return target.copy_(t)
        raw = _byte_view(target, _nbytes(t))
        view = raw.view(t.dtype).reshape(t.shape) if t.numel() else torch.empty(t.shape, dtype=t.dtype)
        return view.copy_(t)

    def cached(self, key: str) -> torch.Tensor | None:
        """The cached tensor (shared: do not modify it), or None when the cache does not hold it;
        nothing is read or counted."""
        return self._cache.peek(self.fid, key)

    def close(self) -> None:
        """No-op: the cache owns the file."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _byte_view(target, nbytes: int) -> torch.Tensor:
    if isinstance(target, (bytearray, memoryview)):
        return torch.frombuffer(target, dtype=torch.uint8, count=nbytes) if nbytes else torch.empty(0, dtype=torch.uint8)
    flat = target.reshape(-1)
    flat = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
    if flat.numel() < nbytes:
        raise ValueError(f"buffer too small ({flat.numel()} < {nbytes} bytes)")
    return flat[:nbytes]
