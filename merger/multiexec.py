"""How the executor runs one key of a multi-model merge (`merger.methods.multi`), with the derived-
tensor cache: kept apart from `merger.engine` so the engine only asks two questions per key.

    derived_hit(plan, kp, derived) -> (prepared or None, slots to read)
    merge_multi(plan, kp, tensors, target, device, derived, check) -> result tensor

`derived` is a `merger.cache.DerivedStore` (or None: file merges compute every key once)."""
from __future__ import annotations

import torch

from .adjust import apply_adjust
from .methods import MultiParams


def derived_hit(plan, kp, derived, slots: tuple) -> tuple:
    """(the cached alpha-independent tensor of `kp` or None, the source slots still to read)."""
    kernel = plan.method.multi
    if kernel is None or derived is None or kp.action != "merge":
        return None, slots
    hit = derived.get(plan.derived_key(kp.key))
    if hit is None or kernel.combine_reads_tuned:
        return hit, slots
    return hit, ("a",)


def merge_multi(plan, kp, t: dict, target, device, derived, check) -> torch.Tensor:
    """Prepare (or take `t["derived"]`) the alpha-independent tensor, then combine it with A at this
    key's alpha, straight into `target` when that has the compute dtype and device. `check(key,
    tensor, out_dtype)` refuses NaN/inf (the engine's finite check)."""
    kernel, compute = plan.method.multi, plan.compute_dtype
    base = t["a"].to(device=device, dtype=compute)
    tuned = [t[s].to(device) for s in plan.slots[1:] if s in t]
    part = base[:, : kp.channels] if kp.channels else base
    prepared = t.get("derived")
    if prepared is None:
        weights, density, outliers, seed = plan.multi
        params = MultiParams(weights=weights or (), density=density or 0.0, outliers=outliers or 0.0,
                             seed=seed or 0, key=kp.key)
        prepared = kernel.prepare(part, tuned, params)
        if derived is not None:
            derived.put(plan.derived_key(kp.key), prepared)
    if kp.channels:
        res = base.clone()
        res[:, : kp.channels] = kernel.combine(part, tuned, prepared, kp.alpha)
    else:
        direct = (target is not None and not kp.adjust and target.dtype == compute
                  and target.device == base.device)
        res = kernel.combine(base, tuned, prepared, kp.alpha, target if direct else None)
    if kp.adjust:
        res = apply_adjust(kp.key, res, plan.adjust, plan.arch)
    check(kp.key, res, kp.out_dtype)
    return res
