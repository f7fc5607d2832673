"""Recent merges as JSON lines (`history.jsonl` in the data folder), newest last, bounded."""
from __future__ import annotations

import json
import os
import threading
import time

from .paths import file_problem

FILE_NAME = "history.jsonl"
MAX_BYTES = 64 << 20


class History:
    """Append-only JSON-lines log of merges; trimmed to `max_entries` when it grows past 2×."""

    def __init__(self, data_dir: str, max_entries: int = 100):
        self.path = os.path.join(data_dir, FILE_NAME)
        self.max_entries = max(1, int(max_entries))
        self._lock = threading.Lock()

    def append(self, kind: str, recipe: dict | None, **fields) -> dict:
        """Record one event (`kind`: "live", "file", "restore", …) with a timestamp."""
        entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "kind": kind, "recipe": recipe}
        entry.update(fields)
        line = json.dumps(entry, ensure_ascii=False, default=str)
        with self._lock:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            self._trim()
        return entry

    def entries(self, limit: int | None = None) -> list[dict]:
        """Newest first; unreadable lines are skipped (and a history that is not a regular file,
        or larger than MAX_BYTES, reads as empty)."""
        if file_problem(self.path) or os.path.getsize(self.path) > MAX_BYTES:
            return []
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        out = []
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            if not isinstance(entry, dict):
                continue
            out.append(entry)
            if limit is not None and len(out) >= limit:
                break
        return out

    def last_recipe(self) -> dict | None:
        for e in self.entries():
            if isinstance(e.get("recipe"), dict):
                return e["recipe"]
        return None

    def _trim(self) -> None:
        if file_problem(self.path):
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        if len(lines) <= 2 * self.max_entries:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines[-self.max_entries:]) + "\n")
        os.replace(tmp, self.path)
