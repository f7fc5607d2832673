"""Binding name-keyed handlers to Gradio events.

Handlers are plain functions `fn(fields: dict) -> dict` (or `fn(fields, progress)`) that read the
values of the named controls and return new values or `gr.update(...)`s for named controls, so they
are tested without a browser. `bind` maps names to components, turns `AlloyError` into the status
line's sentence, and reports progress through `gr.Progress` (gradio 3.41 and Forge's gradio 4).
"""
from __future__ import annotations

import logging
from typing import Callable

import gradio as gr

from ..errors import AlloyError

log = logging.getLogger("alloy.ui")
STATUS = "status"


def run_guarded(fn: Callable, fields: dict, progress=None) -> dict:
    """Call a handler; an error becomes {"status": sentence} (never a traceback in the page)."""
    try:
        result = fn(fields, progress) if progress is not None else fn(fields)
    except AlloyError as e:
        return {STATUS: str(e)}
    except Exception as e:  # an engine bug must not leave the user staring at "Error"
        log.exception("Alloy: unexpected error in %s", getattr(fn, "__name__", fn))
        return {STATUS: f"Unexpected error ({type(e).__name__}): {e}. Details are in the console."}
    return result or {}


class GradioProgress:
    """Adapter: engine progress calls -> gr.Progress.

    Accepts `(fraction)`, `(done, total)` or `(done, total, desc)` calls."""

    def __init__(self, progress):
        self._progress = progress

    def __call__(self, done, total=None, desc=None, *args, **kwargs):
        if self._progress is None:
            return
        desc = kwargs.get("desc", desc)
        frac = float(done) if total is None else (float(done) / float(total) if total else 1.0)
        try:
            self._progress(max(0.0, min(1.0, frac)), desc=desc)
        except Exception:  # progress is cosmetic; never fail a merge over it
            pass


class Ui:
    """The tab's components by name, plus `bind` to attach handlers."""

    def __init__(self):
        self.c: dict[str, gr.components.Component] = {}

    def add(self, name: str, component):
        if name in self.c:
            raise ValueError(f"duplicate UI name {name}")
        self.c[name] = component
        return component

    def __getitem__(self, name: str):
        return self.c[name]

    def __contains__(self, name: str) -> bool:
        return name in self.c

    def bind(self, event: Callable, fn: Callable, inputs, outputs, *, progress=False, js=None, queue=None,
             with_status=True):
        """Attach `fn` to `event` (e.g. `ui["merge"].click`); the status line is always an output."""
        inputs = [n for n in inputs if n in self.c]
        outputs = [n for n in outputs if n in self.c]
        if with_status and STATUS in self.c and STATUS not in outputs:
            outputs.append(STATUS)
        comps_in = {self.c[n]: n for n in inputs}
        comps_out = [self.c[n] for n in outputs]

        def collect(result: dict):
            values = [result.get(n, gr.update()) for n in outputs]
            return values[0] if len(values) == 1 else values

        def named(values) -> dict:
            values = values or {}
            return {name: values.get(comp) for comp, name in comps_in.items()}

        if progress:
            def handler(values=None, progress=gr.Progress()):
                return collect(run_guarded(fn, named(values), GradioProgress(progress)))
        else:
            def handler(values=None):
                return collect(run_guarded(fn, named(values)))
        handler.__name__ = getattr(fn, "__name__", "alloy_handler")
        kwargs = {"fn": handler, "inputs": set(comps_in) or None, "outputs": comps_out}
        if js is not None:
            kwargs["_js"] = js
        if queue is not None:
            kwargs["queue"] = queue
        return event(**kwargs)
