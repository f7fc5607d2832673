"""The multi-model modes' kernels in two steps, so a sweep over alpha re-uses the expensive one.

    prepare(base, tuned, params) -> D     independent of alpha (the merged task vector τ, or SLERP's
                                          inner products): the engine may keep it in a cache
    combine(base, tuned, D, alpha) -> R   cheap: θ₀ + λ·τ in one fused pass (SLERP: one pass)

``base`` is model A in the compute dtype, ``tuned`` the fine-tunes B… in their own dtype on the
same device, ``params`` the per-key `MultiParams`. Formulas: `taskvec`, `geometric`, `spherical`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..multimodes import MULTI_MODES, MultiMode
from . import geometric, spherical, taskvec
from .base import Method


@dataclass(frozen=True)
class MultiParams:
    """What a multi-model kernel needs besides the tensors: one weight per fine-tune, density d,
    outliers γ, the DARE seed and the key (it seeds the DARE masks)."""

    weights: tuple
    density: float = 0.5
    outliers: float = 0.01
    seed: int = 0
    key: str = ""


@dataclass(frozen=True)
class MultiKernel:
    """prepare / combine of one mode (module docstring); `combine_reads_tuned`: combine needs the
    fine-tunes too (SLERP), so a cached D does not spare reading them."""

    spec: MultiMode
    prepare: Callable[..., torch.Tensor]
    combine: Callable[..., torch.Tensor]
    combine_reads_tuned: bool = False

    def run(self, base, tuned, *, alpha: float, params: MultiParams, out=None) -> torch.Tensor:
        """The merged tensor in one call (tests, and merges without a cache)."""
        return self.combine(base, tuned, self.prepare(base, tuned, params), alpha, out)


def _add_delta(base, tuned, tau, alpha, out=None):
    return taskvec.apply_delta(base, tau, alpha, out)


def _slerp_combine(base, tuned, stats, alpha, out=None):
    return spherical.slerp_apply(base, tuned[0], stats, alpha, out)


_PREPARE = {
    "task_arithmetic": lambda base, tuned, p: taskvec.task_arithmetic(base, tuned, p.weights),
    "ties": lambda base, tuned, p: taskvec.ties(base, tuned, p.weights, p.density),
    "dare_linear": lambda base, tuned, p: taskvec.dare_linear(base, tuned, p.weights, p.density, p.seed, p.key),
    "dare_ties": lambda base, tuned, p: taskvec.dare_ties(base, tuned, p.weights, p.density, p.seed, p.key),
    "breadcrumbs": lambda base, tuned, p: taskvec.breadcrumbs(base, tuned, p.weights, p.density, p.outliers),
    "model_stock": lambda base, tuned, p: geometric.model_stock(base, tuned),
    "geometric_median": lambda base, tuned, p: geometric.geometric_median(base, tuned, p.weights),
    "slerp": lambda base, tuned, p: spherical.slerp_stats(base, tuned[0]),
}


def _kernel(spec: MultiMode) -> MultiKernel:
    if spec.id == "slerp":
        return MultiKernel(spec, _PREPARE[spec.id], _slerp_combine, combine_reads_tuned=True)
    return MultiKernel(spec, _PREPARE[spec.id], _add_delta)


def multi_methods() -> list[Method]:
    """One Method (calc normal) per multi-model mode, in MULTI_MODES order."""
    out = []
    for spec in MULTI_MODES.values():
        kernel = _kernel(spec)
        out.append(Method(spec.id, "normal", kernel.run, needs_c=False, uses_beta=False, uses_gamma=False,
                          elementwise=False, summary=spec.summary, multi=kernel))
    return out
