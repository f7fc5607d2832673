"""Test-wide environment: hash cache and data folders never touch the user's home or the repo."""
import os
import tempfile

import pytest

_TMP = tempfile.mkdtemp(prefix="alloy-tests-")
os.environ.setdefault("ALLOY_CACHE_DIR", os.path.join(_TMP, "cache"))
os.environ.setdefault("ALLOY_DATA_DIR", os.path.join(_TMP, "data"))


@pytest.fixture
def forge():
    """The Forge stand-in (tests/forge_standin) as the importable WebUI during one test."""
    from tests.forge_standin.harness import installed
    with installed():
        yield
