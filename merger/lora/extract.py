"""Extract a LoRA from two checkpoints (kohya extract_lora_from_models).

ΔW = tuned − base for every kohya LoRA target (attention/MLP/projection layers of the UNet and
text encoders; ResNet and sampler convs too when ``conv_rank`` is given). Text encoders are
skipped as a whole when max|ΔW| over them is ≤ ``min_diff``. Each ΔW (2-D view out×in·k·k) is
factored by its top-k SVD, batched over modules of one shape: k = min(rank, out, in·k·k)
(``conv_rank`` for 3×3), up = U_k·S_k, down = V_kᵀ, both clamped to ±h, h = the ``clamp_quantile``
(default 0.99, as kohya) of the signed values of [up, down], alpha = k. The top-k SVD is randomized
subspace iteration run to convergence (`linalg.top_svd`; its error is within 1e-3 of the exact
SVD's on the measured checkpoints, see README), or the exact LAPACK SVD with ``exact``. Both files
are streamed key by key; ΔWs wait in per-shape batches of at most PENDING_BYTES. OpenCLIP
in-projections give three modules (q, k, v row thirds). Saved fp32 by default, as kohya does.
"""
from __future__ import annotations

import time

import torch

from merger.errors import AlloyError
from merger.lora.common import LoraResult, overall, pick_device
from merger.lora.keymap import kohya_names, kohya_target_kind
from merger.lora.linalg import CLAMP_QUANTILE, check_quantile, clamp_factors, full_svd, top_svd
from merger.lora.output import file_name, kohya_dims, network_metadata, parse_out_dtype, recipe_json, save_lora
from merger.precision import full_float32

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


@full_float32()
def extract(tuned_path: str, base_path: str, out: str, *, rank: int, conv_rank: int | None = None,
            min_diff: float = 0.01, clamp_quantile: float | None = None, dtype: str | None = "fp32",
            exact: bool = False, overwrite: bool = False, device: str | None = "auto",
            progress=None) -> LoraResult:
    """Write the LoRA tuned − base to `out` (see module docstring); `clamp_quantile` None = 0.99."""
    from merger.arch import check_same_arch, detect
    from merger.io import open_source

    t0 = time.time()
    if rank is None or rank < 1:
        raise AlloyError("extract needs --rank N (N ≥ 1)")
    q = check_quantile(CLAMP_QUANTILE if clamp_quantile is None else clamp_quantile)
    if conv_rank is not None and conv_rank < 1:
        raise AlloyError("--conv-rank must be at least 1")
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
        tensors, norms, errs, dims = {}, [], [], []
        run = (lambda: flush(pending, q, exact, tensors, res, norms, errs, dims, progress, done, total))  # noqa: E731
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
                done += run()
                size = 0
        done += run()
    finally:
        tuned.close()
        base.close()
    if not tensors:
        raise AlloyError(f"no LoRA-able weights differ between {tuned_path} and {base_path}")
    res.overall_error = overall(norms, errs)
    md = network_metadata(arch, **kohya_dims(dims, as_float=True), title=out)
    md["alloy_lora_recipe"] = recipe_json("extract", tuned=file_name(tuned_path), base=file_name(base_path),
                                          rank=rank, conv_rank=conv_rank, min_diff=min_diff, clamp_quantile=q,
                                          exact=exact)
    res.path = save_lora(out, tensors, md, dtype=parse_out_dtype(dtype, torch.float32), overwrite=overwrite)
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


def flush(pending, clamp_q, exact, tensors, res, norms, errs, dims, progress, done, total) -> int:
    """Top-k SVD of every waiting ΔW, batched by shape; stores kohya tensors. Returns how many."""
    n = 0
    for shape2d, items in list(pending.items()):
        A = torch.stack([i[1] for i in items])
        ks = [i[2] for i in items]
        kmax = max(ks)
        n2 = torch.linalg.vector_norm(A, dim=(1, 2)).double() ** 2
        if exact:
            U, S, Vh = full_svd(A)
        else:
            U, S, Vh, _ = top_svd(A, kmax, norm2=n2)
        for j, (name, _, k, dshape) in enumerate(items):
            up, down = clamp_factors(U[j, :, :k] * S[j, :k], Vh[j, :k], clamp_q)
            e2 = float(torch.linalg.vector_norm(torch.addmm(A[j], up, down, alpha=-1)).double() ** 2)
            if len(dshape) == 4:
                up, down = up.reshape(dshape[0], k, 1, 1), down.reshape(k, *dshape[1:])
            tensors[f"{name}.lora_up.weight"] = up.cpu()
            tensors[f"{name}.lora_down.weight"] = down.contiguous().cpu()
            tensors[f"{name}.alpha"] = torch.tensor(float(k))
            nn2 = float(n2[j])
            res.ranks[name], res.errors[name] = k, ((e2 / nn2) ** 0.5 if nn2 > 0 else 0.0)
            dims.append((k, float(k), len(dshape) == 4 and tuple(dshape[2:]) != (1, 1)))
            norms.append(nn2)
            errs.append(e2)
            n += 1
            if progress:
                progress(done + n, total, name)
        del A, U, S, Vh
    pending.clear()
    return n
