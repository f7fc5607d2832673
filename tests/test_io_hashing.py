"""Hashes: full sha256 with in-process and JSON-file caches; A1111's legacy 8-hex hash."""
import hashlib
import json
import os

import pytest

from merger.errors import AlloyError
from merger.io import HashCache, legacy_hash, sha256_file, short_hash


def test_sha256_matches_hashlib(tmp_path):
    p = tmp_path / "f.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)       # spans several read chunks
    p.write_bytes(data)
    full = sha256_file(str(p))
    assert full == hashlib.sha256(data).hexdigest()
    assert short_hash(full) == full[:10]


def test_cache_file_and_invalidation(tmp_path):
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"a" * 1000)
    cache_path = tmp_path / "hashes.json"
    cache = HashCache(str(cache_path))
    h1 = sha256_file(str(p), cache)
    assert h1 == hashlib.sha256(b"a" * 1000).hexdigest()
    stored = json.loads(cache_path.read_text())
    assert stored[os.path.realpath(p)]["sha256"] == h1

    # same size, new content, new mtime -> rehashed (in-process memo and file cache both miss)
    st = os.stat(p)
    p.write_bytes(b"b" * 1000)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    h2 = sha256_file(str(p), HashCache(str(cache_path)))
    assert h2 == hashlib.sha256(b"b" * 1000).hexdigest() != h1

    # a cache entry matching size+mtime is trusted without reading the file (proves it is used)
    real, st = os.path.realpath(p), os.stat(p)
    fake = "f" * 64
    cache_path.write_text(json.dumps({real: {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": fake}}))
    assert sha256_file(str(p), HashCache(str(cache_path))) == fake


def test_corrupt_cache_file_is_ignored(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"xyz")
    bad = tmp_path / "hashes.json"
    bad.write_text("{not json")
    assert sha256_file(str(p), HashCache(str(bad))) == hashlib.sha256(b"xyz").hexdigest()
    assert json.loads(bad.read_text())          # rewritten as valid JSON


def test_symlink_shares_identity(tmp_path):
    p = tmp_path / "real.bin"
    p.write_bytes(b"q" * 10)
    link = tmp_path / "link.bin"
    link.symlink_to(p)
    cache = HashCache(None)
    assert sha256_file(str(link), cache) == sha256_file(str(p), cache)


def test_legacy_hash(tmp_path):
    p = tmp_path / "big.ckpt"
    data = bytes(range(256)) * (0x130000 // 256)
    p.write_bytes(data)
    assert legacy_hash(str(p)) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    small = tmp_path / "small.ckpt"
    small.write_bytes(b"tiny")
    assert legacy_hash(str(small)) == "e3b0c442"     # WebUI hashes zero bytes for short files


def test_missing_file(tmp_path):
    with pytest.raises(AlloyError, match="does not exist"):
        sha256_file(str(tmp_path / "nope"))
    with pytest.raises(AlloyError, match="does not exist"):
        legacy_hash(str(tmp_path / "nope"))
