"""Test-wide environment: hash cache and data folders never touch the user's home or the repo."""
import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="alloy-tests-")
os.environ.setdefault("ALLOY_CACHE_DIR", os.path.join(_TMP, "cache"))
os.environ.setdefault("ALLOY_DATA_DIR", os.path.join(_TMP, "data"))
