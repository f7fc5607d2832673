"""Registry of merge methods: (merge mode, calc mode) → `Method` (spec §3, §4, §20).

Valid combinations (stricter than SuperMerger, which let cosine/tensor/self/smoothAdd run under
any mode and produced meaningless results, spec §17.5):

| calc | modes |
|---|---|
| normal | weight_sum, add_difference, triple_sum, sum_twice |
| cosineA, cosineB, tensor, tensor2, self | weight_sum |
| trainDifference, smoothAdd, extract | add_difference |
| normal only | the multi-model modes (task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, model_stock, geometric_median, slerp; see merger.methods.multi) |

`effective_mode(calc, requested)` maps a recipe's mode to the one the engine runs:
* trainDifference, extract → add_difference (SuperMerger forces this too, so its recipes load);
* self → weight_sum (self only scales A, so the mode has no effect; this avoids needing model C);
* any other calc → the requested mode unchanged; `get_method` then refuses invalid pairs
  (e.g. cosineA with add_difference, smoothAdd with weight_sum) with an AlloyError naming the valid ones.
"""
from __future__ import annotations

from types import MappingProxyType

from ..errors import AlloyError
from ..modes import CALCS, MODES, effective_mode, normalize_calc, normalize_mode
from . import basic, cosine, extract, scale, smooth, tensor, train_difference
from .base import KeyContext, Method, copy_of, emit
from .multi import MultiParams, multi_methods

__all__ = ["Method", "KeyContext", "MultiParams", "get_method", "valid_calcs", "effective_mode",
           "all_methods", "copy_of", "emit"]

def _build() -> MappingProxyType:
    """The registry as data: one Method per valid (mode, calc) pair."""
    normal = {
        "weight_sum": Method("weight_sum", "normal", basic.weight_sum, needs_c=False, uses_beta=False,
                             uses_gamma=False, elementwise=True, summary="(1-a)*A + a*B", out_aliases_a=True,
                             bound=basic.weight_sum_bound),
        "add_difference": Method("add_difference", "normal", basic.add_difference, needs_c=True,
                                 uses_beta=False, uses_gamma=False, elementwise=True,
                                 summary="A + a*(B-C)", bound=basic.add_difference_bound),
        "triple_sum": Method("triple_sum", "normal", basic.triple_sum, needs_c=True, uses_beta=True,
                             uses_gamma=False, elementwise=True, summary="(1-a-b)*A + a*B + b*C",
                             bound=basic.triple_sum_bound),
        "sum_twice": Method("sum_twice", "normal", basic.sum_twice, needs_c=True, uses_beta=True,
                            uses_gamma=False, elementwise=True, summary="(1-b)*((1-a)*A + a*B) + b*C",
                            out_aliases_a=True, bound=basic.sum_twice_bound),
    }
    methods = [
        *normal.values(),
        Method("weight_sum", "cosineA", cosine.cosine_a, needs_c=False, uses_beta=False, uses_gamma=False,
               elementwise=False, prepass=cosine.prepass_a, finalize=cosine.finalize, skips_vae=True,
               keystats=cosine.keystats_a, rowwise="dim0",
               summary="lerp(B, A, k), k from the normalised similarity of A and B minus |a|"),
        Method("weight_sum", "cosineB", cosine.cosine_b, needs_c=False, uses_beta=False, uses_gamma=False,
               elementwise=False, prepass=cosine.prepass_b, finalize=cosine.finalize, skips_vae=True,
               keystats=cosine.keystats_b, rowwise="dim0",
               summary="lerp(B, A, k), k from the similarity of A and B minus a"),
        Method("weight_sum", "tensor", tensor.tensor, needs_c=False, uses_beta=True, uses_gamma=False,
               elementwise=False, summary="a window of dim-0 slices from B"),
        Method("weight_sum", "tensor2", tensor.tensor2, needs_c=False, uses_beta=True, uses_gamma=False,
               elementwise=False, summary="a window of dim-1 slices from B"),
        Method("weight_sum", "self", scale.scale_self, needs_c=False, uses_beta=False, uses_gamma=False,
               elementwise=True, uses_key=True, out_aliases_a=True, bound=scale.scale_self_bound,
               summary="a*A (except to_out/proj_out/norm keys; a=0 leaves A)"),
        Method("add_difference", "trainDifference", train_difference.train_difference, needs_c=True,
               uses_beta=False, uses_gamma=False, elementwise=True,
               summary="A + 1.8*a*(B-C)*|B-A|/(|B-C|+|B-A|)"),
        Method("add_difference", "smoothAdd", smooth.smooth_add, needs_c=True, uses_beta=False,
               uses_gamma=False, elementwise=False, rowwise="dim0", halo=smooth.HALO,
               summary="A + a*gaussian(median(B-C))"),
        Method("add_difference", "extract", extract.extract, needs_c=True, uses_beta=True, uses_gamma=True,
               elementwise=False, check=extract.check, rowwise="last",
               summary="A + lerp(B-A, C-A, a)*lerp(d, 1-d, b), d=((cos+1)/2)^g"),
        *multi_methods(),
    ]
    return MappingProxyType({(m.mode, m.calc): m for m in methods})


_REGISTRY = _build()


def all_methods() -> list[Method]:
    """Every registered Method, in (MODES, CALCS) order."""
    return [_REGISTRY[(m, c)] for m in MODES for c in CALCS if (m, c) in _REGISTRY]


def valid_calcs(mode: str) -> list[str]:
    """Calc modes that can run under `mode` (in CALCS order)."""
    mode = normalize_mode(mode)
    return [c for c in CALCS if (mode, c) in _REGISTRY]


def _valid_modes(calc: str) -> list[str]:
    return [m for m in MODES if (m, calc) in _REGISTRY]


def get_method(mode: str, calc: str = "normal") -> Method:
    """The Method for (mode, calc); AlloyError naming the valid modes when the pair is invalid."""
    mode, calc = normalize_mode(mode), normalize_calc(calc)
    method = _REGISTRY.get((mode, calc))
    if method is None:
        modes = " or ".join(_valid_modes(calc))
        raise AlloyError(f"Calculation mode {calc} works only with merge mode {modes}, not {mode} "
                         f"(valid with {mode}: {', '.join(valid_calcs(mode))}).")
    return method
