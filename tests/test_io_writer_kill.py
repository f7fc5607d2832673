"""SIGKILL at random moments during saves: the target is always absent, the old file, or a
complete new file (byte-identical to a reference write), never a partial one."""
import os
import random
import signal
import time

import pytest
import torch

from merger.io import open_source, save_state_dict
from merger.io import writer as writer_mod

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def version(v: int) -> dict:
    # 16 x 256 KiB = 4 MiB per file; values identify the version
    return {f"t{i:02d}": torch.full((65536,), float(v * 100 + i)) for i in range(16)}


def _child_loop(target: str, versions: list) -> None:
    """Runs in the forked child: save versions over the target forever (until killed)."""
    try:
        i = 0
        while True:
            save_state_dict(target, versions[i % len(versions)], {"v": str(i % len(versions))},
                            overwrite=True)
            i += 1
    finally:
        os._exit(1)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def test_sigkill_during_save(tmp_path):
    versions = [version(v) for v in (1, 2, 3)]   # made before fork: the child only writes
    refs = set()
    for i, t in enumerate(versions):
        p = save_state_dict(tmp_path / f"ref{i}.safetensors", t, {"v": str(i)})
        refs.add(open(p, "rb").read())
        os.unlink(p)
    old = save_state_dict(tmp_path / "old.safetensors", version(9), {"v": "old"})
    old_bytes = open(old, "rb").read()
    os.unlink(old)

    rng = random.Random(1234)
    target = str(tmp_path / "out.safetensors")
    outcomes = {"absent": 0, "old": 0, "new": 0}
    for it in range(10):
        had_old = it % 2 == 1
        if had_old:
            with open(target, "wb") as f:
                f.write(old_bytes)
        elif os.path.exists(target):
            os.unlink(target)
        pid = os.fork()
        if pid == 0:
            _child_loop(target, versions)
        if it == 9:   # make sure at least one kill lands after a commit replaced the old file
            deadline = time.monotonic() + 5
            while _read(target) == old_bytes and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3 if it % 4 >= 2 else 0.03))  # many kills land in the first save
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if not os.path.exists(target):
            assert not had_old, "the old file vanished"
            outcomes["absent"] += 1
            continue
        data = open(target, "rb").read()
        if data == old_bytes:
            assert had_old
            outcomes["old"] += 1
        else:
            assert data in refs, f"iteration {it}: a partial or corrupt file is visible"
            outcomes["new"] += 1
        open_source(target).close()
    assert outcomes["new"] > 0                          # the kills did land after commits too
    # the next save sweeps the killed writers' temp files; nothing is left behind
    save_state_dict(target, versions[0], {"v": "0"}, overwrite=True)
    assert [n for n in os.listdir(tmp_path) if writer_mod.TEMP_TAG in n] == []
