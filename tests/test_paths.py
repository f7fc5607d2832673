"""The path policy (merger/paths.py): output names stay inside their folder, input names resolve
only inside the configured folders, special files are refused, names in messages are escaped."""
import os

import pytest

from merger.errors import AlloyError
from merger.paths import check_input_file, input_file, output_file, shown


@pytest.fixture
def tree(tmp_path):
    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "a.safetensors").write_bytes(b"x")
    (outside / "secret.safetensors").write_bytes(b"s")
    os.symlink(outside, root / "escape")
    os.symlink(outside / "secret.safetensors", root / "link.safetensors")
    os.symlink("/dev/null", root / "null.safetensors")
    os.mkfifo(root / "fifo.safetensors")
    return root, outside


def test_output_names_stay_inside(tree):
    root, outside = tree
    assert output_file(str(root), "m") == str(root / "m.safetensors")
    assert output_file(str(root), "sub/m.safetensors") == str(root / "sub" / "m.safetensors")
    assert output_file(str(root), "a") == str(root / "a.safetensors")          # existing plain file: allowed
    refused = {
        "../x": "leaves the folder", "sub/../../x": "leaves the folder", "/etc/passwd": "is a path",
        str(outside / "y"): "is a path", "~/x": "is a path", "C:\\x": "is a path", "\\\\server\\x": "is a path",
        "escape/x": "through a link", "link": "is a link", "null": "is a link", "fifo": "not a plain file",
        ".hidden": "hidden", "sub/.x": "hidden", "a\nb": "control character", "x\x00y": "control character",
        "": "name", "   ": "name", "m.ckpt": ".safetensors", "nowhere/m": "does not exist",
        "x" * 300: "longer than",
    }
    for name, needle in refused.items():
        with pytest.raises(AlloyError, match=needle):
            output_file(str(root), name)
    with pytest.raises(AlloyError, match="string"):
        output_file(str(root), ["m"])
    assert sorted(os.listdir(outside)) == ["secret.safetensors"]


def test_input_names_resolve_only_inside(tree):
    root, outside = tree
    assert input_file([str(root)], "a") == str(root / "a.safetensors")
    assert input_file([str(root)], str(root / "a.safetensors")) == str(root / "a.safetensors")
    assert input_file([str(root)], "link.safetensors") == str(root / "link.safetensors")   # a link the user made
    for name, needle in {"../outside/secret.safetensors": "leaves", str(outside / "secret.safetensors"): "is not in",
                         "null.safetensors": "not a regular file", "fifo.safetensors": "not a regular file",
                         "nope": "not found", "sub": "not found"}.items():
        with pytest.raises(AlloyError, match=needle):
            input_file([str(root)], name)


def test_special_files_and_escaped_names(tmp_path):
    for path in ("/dev/null", "/proc/self/mem", str(tmp_path)):
        with pytest.raises(AlloyError) as e:
            check_input_file(path, "model A")
        assert "\n" not in str(e.value)
    os.symlink("/proc/self/mem", tmp_path / "mem.safetensors")
    with pytest.raises(AlloyError, match="not a regular file"):
        check_input_file(str(tmp_path / "mem.safetensors"), "model A")
    assert shown("/x/a\nb.safetensors") == repr("/x/a\nb.safetensors")
    assert shown("/x/plain name.safetensors") == "/x/plain name.safetensors"
