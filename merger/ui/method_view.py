"""Which controls a (merge mode, calc mode) pair shows, as `gr.update`s keyed by control name.

Shared by the merge panel (mode/calc changes) and the recipe panel (loading a recipe); it imports
neither, so the two panels do not import each other."""
from __future__ import annotations

import gradio as gr

from ..recipe import normalize_mode
from . import fields as fl

VIEW_OUTPUTS = ("calc", "model_c", "model_d", "model_e", "model_f", "beta", "gamma", "beta_blocks",
                "weights", "density", "outliers", "method_info")
ALPHA_MEANING = {"λ": "alpha = λ, the scale of the merged task vector τᵢ = Mᵢ − A",
                 "t": "alpha = t, the interpolation from A (0) to B (1)"}


def method_view(mode: str, calc: str | None) -> dict:
    """Controls of the (mode, calc) pair: calc choices, models C–F, beta, gamma, the multi-model
    parameters, and the formula (with what alpha means for the multi-model modes).

    calc keeps its value when still valid for the mode, else becomes the mode's first calc."""
    from ..methods import get_method, valid_calcs
    mode_id = normalize_mode(mode or "weight_sum")
    calcs = list(valid_calcs(mode_id))
    if calc not in calcs:
        calc = calcs[0]
    m = get_method(mode_id, calc)
    spec = m.multi.spec if m.multi is not None else None
    slots = fl.model_slots(mode_id, m.needs_c)
    uses = spec.uses if spec is not None else frozenset()
    return {
        "calc": gr.update(choices=calcs, value=calc),
        **{f"model_{s}": gr.update(visible=s in slots) for s in "cdef"},
        "beta": gr.update(visible=bool(m.uses_beta)),
        "gamma": gr.update(visible=bool(m.uses_gamma)),
        "beta_blocks": gr.update(visible=bool(m.uses_beta)),
        **{name: gr.update(visible=name in uses) for name in ("weights", "density", "outliers")},
        "method_info": f"`{getattr(m, 'summary', '') or fl.mode_label(mode_id) + ' · ' + calc}`"
                       + (f" — {ALPHA_MEANING[spec.alpha_name]}" if spec is not None else "")
                       + ("; the masks follow the Seed under Random weights" if "seed" in uses else ""),
    }
