"""What the executor hands results to (`Sink`) and what a merge reports (`Report`).

Kept apart from the executor so sinks (`merger.sinks.FileSink`, `merger.live.LiveSink`) and the
callers of a merge import no engine code."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


class Sink:
    """Where merged tensors go, in plan order.

    `target(kp)` may hand out a destination of kp.shape in the sink's dtype (the executor computes
    or copies into it); several targets may be outstanding before their `put`s, which come in the
    same order. `put(kp, tensor)` receives the target itself or, when the sink gave none, a
    result in kp.out_dtype."""

    def begin(self, plan) -> None:
        pass

    def target(self, kp) -> torch.Tensor | None:
        return None

    def put(self, kp, tensor: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self, report: "Report") -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass
class Report:
    recipe: object
    seconds: float = 0.0
    keys_merged: int = 0
    keys_copied: int = 0
    keys_written: int = 0
    keys_from_cache: int = 0
    path: str | None = None
    warnings: list = field(default_factory=list)

    def message(self) -> str:
        where = f" → {self.path}" if self.path else ""
        cache = f", {self.keys_from_cache} keys from cache" if self.keys_from_cache else ""
        name = self.recipe.display_name() if self.recipe is not None else "merge"
        return (f"{name}{where}: {self.keys_merged} keys merged, {self.keys_copied} copied{cache} "
                f"in {self.seconds:.1f} s")
