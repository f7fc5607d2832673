"""Extract a LoRA from two checkpoints (kohya extract_lora_from_models).

ΔW = tuned − base for every kohya LoRA target (attention/MLP/projection layers of the UNet and
text encoders; ResNet and sampler convs too when ``conv_rank`` is given). Text encoders are
skipped as a whole when max|ΔW| over them is ≤ ``min_diff``. Each ΔW (2-D view out×in·k·k) is
factored by exact SVD, batched over modules of one shape: k = min(rank, out, in·k·k) (``conv_rank``
for 3×3), up = U_k·S_k, down = V_kᵀ, both clamped at the ``clamp_quantile`` of their values,
alpha = k. OpenCLIP in-projections give three modules (q, k, v row thirds).
"""
from __future__ import annotations

import time

import torch

from merger.errors import AlloyError
from merger.lora.common import LoraResult, overall, pick_device
from merger.lora.keymap import kohya_names, kohya_target_kind
from merger.lora.linalg import clamp_factors, full_svd
from merger.lora.output import network_metadata, parse_out_dtype, recipe_json, save_lora

PENDING_BYTES = 256 << 20     # flush batched SVDs when this much ΔW is waiting


def targets(tuned, base, arch: str, conv: bool):
    """[(key, shape, kohya names)] for the weights both files hold with equal shapes."""
    out = []
    for key in tuned.keys():
        if key not in base:
            continue
        shape = tuple(tuned.info(key).shape)
        if tuple(base.info(key).shape) != shape:
            raise AlloyError(f"{key!r} has shape {shape} in the tuned model but "
                             f"{tuple(base.info(key).shape)} in the base model")
        kind = kohya_target_kind(key, arch)
        if kind is None or (kind == "conv" and not conv):
            continue
        names = kohya_names(key, shape, arch)
        if names:
            out.append((key, shape, names))
    return out


def is_te(name: str) -> bool:
    return name.startswith("lora_te")


def extract(tuned_path: str, base_path: str, out: str, *, rank: int, conv_rank: int | None = None,
            min_diff: float = 0.01, clamp_quantile: float | None = 0.99, dtype: str | None = "fp16",
            overwrite: bool = False, device: str | None = "auto", progress=None) -> LoraResult:
    """Write the LoRA tuned − base to `out` (see module docstring)."""
    from merger.arch import check_same_arch, detect
    from merger.io import open_source

    t0 = time.time()
    if rank is None or rank < 1:
        raise AlloyError("extract needs --rank N (N ≥ 1)")
    if clamp_quantile is not None and not 0 < clamp_quantile <= 1:
        raise AlloyError("--clamp-quantile must be in (0, 1]")
    tuned, base = open_source(tuned_path, "tuned model"), open_source(base_path, "base model")
    try:
        a_t = detect(tuned.keys(), f"tuned model ({tuned_path})", {k: tuple(tuned.info(k).shape) for k in tuned.keys()})
        a_b = detect(base.keys(), f"base model ({base_path})", {k: tuple(base.info(k).shape) for k in base.keys()})
        check_same_arch({f"tuned model ({tuned_path})": a_t, f"base model ({base_path})": a_b})
        arch = a_t.name
        if arch == "flux":
            raise AlloyError("extracting LoRAs from Flux models is not supported (SD1, SD2, SDXL only)")
        dev = pick_device(device)
        res = LoraResult("extract", arch=arch)
        todo = targets(tuned, base, arch, conv_rank is not None)
        skip_te = te_unchanged(tuned, base, todo, min_diff, dev)
        if skip_te:
            res.messages.append(f"text encoders differ by at most {min_diff}; they are not extracted")
        tensors, norms, errs = {}, [], []
        pending: dict[tuple, list] = {}
        size = 0
        total = sum(len(n) for _, _, n in todo)
        done = 0
        for key, shape, names in todo:
            if skip_te and is_te(names[0][0]):
                continue
            delta = tuned.read(key).to(dev, torch.float32) - base.read(key).to(dev, torch.float32)
            for name, t in names:
                d = delta if t.rows is None else delta[t.rows * (shape[0] // 3):(t.rows + 1) * (shape[0] // 3)]
                kernel = tuple(shape[2:]) if len(shape) == 4 else None
                cap = conv_rank if kernel not in (None, (1, 1)) else rank
                d2 = d.reshape(d.shape[0], -1)
                pending.setdefault(tuple(d2.shape), []).append((name, d2, min(cap, *d2.shape), tuple(d.shape)))
                size += d2.numel() * 4
            if size > PENDING_BYTES:
                done += flush(pending, clamp_quantile, tensors, res, norms, errs, progress, done, total)
                size = 0
        done += flush(pending, clamp_quantile, tensors, res, norms, errs, progress, done, total)
    finally:
        tuned.close()
        base.close()
    if not tensors:
        raise AlloyError(f"no LoRA-able weights differ between {tuned_path} and {base_path}")
    res.overall_error = overall(norms, errs)
    md = network_metadata(arch, rank, float(rank), conv_dim=conv_rank, conv_alpha=conv_rank)
    md["alloy_lora_recipe"] = recipe_json("extract", tuned=tuned_path, base=base_path, rank=rank,
                                          conv_rank=conv_rank, min_diff=min_diff, clamp_quantile=clamp_quantile)
    res.path = save_lora(out, tensors, md, dtype=parse_out_dtype(dtype, torch.float16), overwrite=overwrite)
    res.modules = len(res.ranks)
    res.seconds = time.time() - t0
    return res


def te_unchanged(tuned, base, todo, min_diff, dev) -> bool:
    """True when every text-encoder target differs by at most `min_diff` (kohya's rule)."""
    te = [(k, n) for k, _, n in todo if is_te(n[0][0])]
    if not te:
        return False
    for key, _ in te:
        d = (tuned.read(key).to(dev, torch.float32) - base.read(key).to(dev, torch.float32)).abs().max()
        if float(d) > min_diff:
            return False
    return True


def flush(pending, clamp_q, tensors, res, norms, errs, progress, done, total) -> int:
    """Batched SVD of every waiting ΔW; stores kohya tensors. Returns how many were done."""
    n = 0
    for shape2d, items in list(pending.items()):
        U, S, Vh = full_svd(torch.stack([i[1] for i in items]))
        for j, (name, d2, k, dshape) in enumerate(items):
            up, down = clamp_factors(U[j, :, :k] * S[j, :k], Vh[j, :k], clamp_q)
            n2 = float((d2.double() ** 2).sum())
            e2 = float(((d2 - up @ down).double() ** 2).sum())
            if len(dshape) == 4:
                up, down = up.reshape(dshape[0], k, 1, 1), down.reshape(k, *dshape[1:])
            tensors[f"{name}.lora_up.weight"] = up.cpu()
            tensors[f"{name}.lora_down.weight"] = down.cpu()
            tensors[f"{name}.alpha"] = torch.tensor(float(k))
            res.ranks[name], res.errors[name] = k, ((e2 / n2) ** 0.5 if n2 > 0 else 0.0)
            norms.append(n2)
            errs.append(e2)
            n += 1
            if progress:
                progress(done + n, total, name)
    pending.clear()
    return n
