"""Model file hashes: full SHA-256 (cached) and A1111's legacy 8-hex hash."""
from __future__ import annotations

import hashlib
import json
import os
import threading

from merger.errors import AlloyError

CHUNK = 1 << 20


def _stat_key(path: str) -> tuple[str, int, int]:
    """(realpath, size, mtime_ns): the identity a cached hash is valid for."""
    from merger.paths import file_problem, shown
    real = os.path.realpath(os.fspath(path))
    problem = file_problem(real)
    if problem:
        raise AlloyError(f"cannot hash {shown(path)}: it {problem}")
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns


def _sha256_uncached(path: str) -> str:
    """sha256 of the whole file, read in 1 MiB chunks into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
    except OSError as exc:
        from merger.paths import shown
        raise AlloyError(f"cannot hash {shown(path)}: {exc.strerror or exc}") from None
    return h.hexdigest()


_MEMO: dict[tuple[str, int, int], str] = {}     # in-process: (realpath, size, mtime_ns) -> sha256
_MEMO_LOCK = threading.Lock()
_MEMO_MAX = 4096


def _sha256_memo(real: str, size: int, mtime_ns: int) -> str:
    """In-process memo; the (size, mtime_ns) arguments make an edited file a new entry."""
    key = (real, size, mtime_ns)
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
    if hit is not None:
        return hit
    sha = _sha256_uncached(real)
    with _MEMO_LOCK:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = sha
    return sha


class HashCache:
    """Persistent sha256 cache in a JSON file {realpath: {"size", "mtime_ns", "sha256"}}.
    A missing or corrupt file starts empty; saves are atomic (temp + os.replace)."""

    def __init__(self, path: str | None):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict] = self._load()

    def _load(self) -> dict[str, dict]:
        if not self.path or not os.path.isfile(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @classmethod
    def default(cls) -> "HashCache":
        """The per-user cache: $ALLOY_CACHE_DIR/hashes.json, else ~/.cache/alloy/hashes.json
        (in memory only when that folder cannot be made). Hashing a 2 GB file takes seconds;
        like the WebUI's own hash cache, this makes it once per file version."""
        folder = os.environ.get("ALLOY_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "alloy")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            return cls(None)
        return cls(os.path.join(folder, "hashes.json"))

    def get(self, real: str, size: int, mtime_ns: int) -> str | None:
        with self._lock:
            row = self._data.get(real)
        if isinstance(row, dict) and row.get("size") == size and row.get("mtime_ns") == mtime_ns:
            sha = row.get("sha256")
            return sha if isinstance(sha, str) and len(sha) == 64 else None
        return None

    def put(self, real: str, size: int, mtime_ns: int, sha256: str) -> None:
        with self._lock:
            self._data[real] = {"size": size, "mtime_ns": mtime_ns, "sha256": sha256}
            self._save()

    def _save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self._data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def sha256_file(path, cache: HashCache | None = None) -> str:
    """Full sha256 hex of a file; cached in-process and (optionally) in `cache`, keyed by
    realpath + size + mtime_ns, so a rewritten file is hashed again."""
    real, size, mtime_ns = _stat_key(path)
    if cache is not None:
        hit = cache.get(real, size, mtime_ns)
        if hit is not None:
            return hit
    sha = _sha256_memo(real, size, mtime_ns)
    if cache is not None:
        cache.put(real, size, mtime_ns, sha)
    return sha


def cached_sha256(path, cache: HashCache | None = None) -> str | None:
    """The sha256 of `path` if it is already known (this process or `cache`), else None; never
    reads the file's contents."""
    try:
        real = os.path.realpath(os.fspath(path))
        st = os.stat(real)
    except (OSError, ValueError):
        return None
    key = (real, st.st_size, st.st_mtime_ns)
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
    if hit is None and cache is not None:
        hit = cache.get(*key)
    return hit


def short_hash(sha256: str) -> str:
    """The WebUI's short hash: the first 10 hex digits of the full sha256."""
    return sha256[:10]


def legacy_hash(path) -> str:
    """A1111's old model hash: first 8 hex of sha256 over the 0x10000 bytes at offset 0x100000
    (files shorter than that hash fewer or no bytes, exactly as the WebUI does)."""
    _stat_key(path)
    try:
        with open(os.fspath(path), "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except OSError as exc:
        from merger.paths import shown
        raise AlloyError(f"cannot hash {shown(path)}: {exc.strerror or exc}") from None
