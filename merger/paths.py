"""The path policy: how names from the REST API and the UI become files, and how file names
appear in messages.

- `output_file(root, name)`: an output *name* (sub-folders allowed) inside the configured folder
  `root`: no absolute path, no `..`, no hidden or control-character parts, no link or special file
  at the target, no folder on the way that leads outside `root` (links resolved), `.safetensors`
  only. Every API/UI write goes through it (Session.output_path, the LoRA routes).
- `input_file(roots, name)`: a file *name* (or an absolute path) that lies inside one of the
  configured folders and is a regular file. API/UI reads by name go through it or through the
  host's model list.
- `check_input_file(path, label)`: what every reader (CLI included) checks before opening: a
  regular file, not a device, FIFO, socket or a link into /proc, /sys or /dev.
- `shown(path)`: a path for a message; repr-escaped when it holds control characters, so a
  newline in a file name cannot split the sentence.

The CLI keeps accepting any path for its inputs and outputs: the user owns the shell."""
from __future__ import annotations

import os
import re
import stat

from .errors import AlloyError

MODEL_EXTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
OUTPUT_EXT = ".safetensors"
SPECIAL_ROOTS = ("/proc", "/sys", "/dev")
MAX_PART = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def shown(path) -> str:
    """`path` as text for a message: repr()-escaped when it holds control characters."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    return repr(text) if _CONTROL.search(text) else text


def _special(real: str) -> bool:
    return any(real == r or real.startswith(r + "/") for r in SPECIAL_ROOTS)


def file_problem(path) -> str | None:
    """Why `path` is not a readable regular file ("does not exist", "is a folder, …"), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError) as e:
        return f"cannot be read ({getattr(e, 'strerror', None) or e})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode) or _special(os.path.realpath(path)):
        return "is not a regular file (a device, pipe, socket or system file)"
    return None


def check_input_file(path, label: str) -> None:
    """AlloyError unless `path` is an existing regular file outside /proc, /sys and /dev."""
    problem = file_problem(path)
    if problem:
        raise AlloyError(f"{label} ({shown(path)}) {problem}.")


def _parts(name, what: str) -> list[str]:
    """The components of a relative name, each checked; AlloyError for anything path-like."""
    if not isinstance(name, str):
        raise AlloyError(f"The {what} name must be a string.")
    text = name.strip()
    if not text:
        raise AlloyError(f"Give the {what} a name.")
    if _CONTROL.search(text):
        raise AlloyError(f"The {what} name {shown(text)} contains a control character.")
    if text.startswith(("/", "\\", "~")) or _DRIVE.match(text) or os.path.isabs(text):
        raise AlloyError(f"The {what} name {shown(text)} is a path; give a name inside the folder "
                         "(sub-folders allowed, no absolute paths).")
    parts = [p for p in re.split(r"[\\/]+", text) if p not in ("", ".")]
    if not parts:
        raise AlloyError(f"Give the {what} a name.")
    for p in parts:
        if p == "..":
            raise AlloyError(f"The {what} name {shown(text)} leaves the folder ('..' is not allowed).")
        if p.startswith("."):
            raise AlloyError(f"The {what} name {shown(text)} has a hidden part '{p}'; names may not start with '.'.")
        if len(p.encode("utf-8", "surrogatepass")) > MAX_PART:
            raise AlloyError(f"The {what} name has a part longer than {MAX_PART} bytes.")
    return parts


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def output_file(root: str, name, *, what: str = "output file") -> str:
    """The absolute path for output `name` inside `root` (".safetensors" added when missing)."""
    parts = _parts(name, what)
    last = parts[-1]
    if not last.lower().endswith(OUTPUT_EXT):
        if last.lower().endswith(MODEL_EXTS):
            raise AlloyError(f"The {what} must be a {OUTPUT_EXT} file, not {shown(last)}.")
        parts[-1] = last = last + OUTPUT_EXT
    if len(last.encode("utf-8", "surrogatepass")) > MAX_PART:
        raise AlloyError(f"The {what} name has a part longer than {MAX_PART} bytes.")
    root = os.path.abspath(root)
    path = os.path.join(root, *parts)
    shown_name = shown("/".join(parts))
    folder = os.path.dirname(path)
    real_root = os.path.realpath(root)
    if not _inside(os.path.realpath(folder), real_root):
        raise AlloyError(f"The {what} {shown_name} would leave the folder {shown(root)} through a link.")
    if not os.path.isdir(folder):
        raise AlloyError(f"The folder of the {what} {shown_name} does not exist in {shown(root)}.")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise AlloyError(f"The {what} {shown_name} cannot be checked: {e.strerror}.") from None
    if stat.S_ISLNK(st.st_mode):
        raise AlloyError(f"The {what} {shown_name} is a link; Alloy replaces only plain files.")
    if not stat.S_ISREG(st.st_mode):
        raise AlloyError(f"The {what} {shown_name} exists and is not a plain file.")
    return path


def input_file(roots, name, *, what: str = "file", exts: tuple = MODEL_EXTS) -> str:
    """The existing regular file `name` names inside one of `roots` (a relative name, or an
    absolute path that lies in one of them; `exts[0]` added when it has none of `exts`);
    AlloyError naming `what` otherwise."""
    roots = [os.path.abspath(r) for r in roots if r]
    if isinstance(name, str) and os.path.isabs(name.strip()) and not _CONTROL.search(name):
        path = os.path.normpath(name.strip())
        if not any(_inside(path, r) for r in roots):
            raise AlloyError(f"The {what} {shown(path)} is not in {_folders(roots)}.")
        candidates = [path]
    else:
        parts = _parts(name, what)
        candidates = [os.path.join(r, *parts) for r in roots]
    if exts and not candidates[0].lower().endswith(exts):
        candidates = [c + exts[0] for c in candidates]     # "big" names big.safetensors
    for path in candidates:
        if os.path.lexists(path):
            check_input_file(path, what)
            return path
    raise AlloyError(f"The {what} {shown(name)} was not found in {_folders(roots)}.")


def _folders(roots: list[str]) -> str:
    if not roots:
        return "any configured folder"
    return " or ".join(shown(r) for r in roots)
