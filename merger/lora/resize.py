"""Resize a LoRA (kohya resize_lora): per module, SVD of up·down (exact factored SVD), keep r
singular values — fixed ``rank`` or dynamic ``sv_ratio`` / ``sv_fro`` / ``sv_cumulative`` (rule in
`linalg.choose_rank`) — up = U_r·S_r, down = V_rᵀ, alpha = (alpha_old/rank_old)·r so that a
strength means the same as before. Metadata dim/alpha become "Dynamic" for dynamic resizes.
"""
from __future__ import annotations

import time

import torch

from merger.errors import AlloyError
from merger.lora.common import LoraResult, overall, pick_device
from merger.lora.formats import load_lora
from merger.lora.keymap import lora_arch
from merger.lora.linalg import DYNAMIC, choose_rank, flat, orth_factor_svd, spectrum_stats
from merger.lora.output import dim_alpha_text, parse_out_dtype, recipe_json, save_lora

BATCH = 64


def check_args(rank, dynamic, param):
    if dynamic is None and (rank is None or rank < 1):
        raise AlloyError("resize needs --rank N or --dynamic METHOD --param P")
    if dynamic is not None:
        if dynamic not in DYNAMIC:
            raise AlloyError(f"unknown dynamic method {dynamic!r}; use {', '.join(DYNAMIC)}")
        if param is None or param <= 0:
            raise AlloyError(f"--dynamic {dynamic} needs a positive --param")
        if dynamic in ("sv_fro", "sv_cumulative") and param > 1:
            raise AlloyError(f"--param for {dynamic} is a fraction in (0, 1]")
        if dynamic == "sv_ratio" and param < 1:
            raise AlloyError("--param for sv_ratio is a ratio σ_max/σ ≥ 1")
    if rank is not None and rank < 1:
        raise AlloyError("--rank must be at least 1")


def resize_lora(path: str, out: str, *, rank: int | None = None, dynamic: str | None = None,
                param: float | None = None, dtype: str | None = "keep", overwrite: bool = False,
                device: str | None = "auto", verbose: bool = False, progress=None) -> LoraResult:
    """Resize the LoRA at `path` into `out` (see module docstring). With `verbose`, one line per
    module (retained Σσ and Frobenius fractions, σ₁/σ_r) goes to the result's messages."""
    t0 = time.time()
    check_args(rank, dynamic, param)
    f = load_lora(path, "LoRA")
    for name, m in f.modules.items():
        if m.kind != "lora" or "lora_mid.weight" in m.weights:
            raise AlloyError(f"{path}: module {name!r} is {m.kind if m.kind != 'lora' else 'CP LoCon'}; "
                             "only LoRA/LoCon modules can be resized")
    dev = pick_device(device)
    res = LoraResult("resize", arch=lora_arch(f.modules, f.metadata))
    groups: dict[tuple, list] = {}
    for name, m in f.modules.items():
        up = flat(m.weights["lora_up.weight"]).to(dev, torch.float32)
        down = flat(m.weights["lora_down.weight"]).to(dev, torch.float32)
        groups.setdefault((tuple(up.shape), tuple(down.shape)), []).append((name, m, up, down))
    tensors, norms, errs, alphas, done = {}, [], [], [], 0
    for items in groups.values():
        for b in range(0, len(items), BATCH):
            chunk = items[b:b + BATCH]
            U, S, Vh = orth_factor_svd(torch.stack([c[2] for c in chunk]), torch.stack([c[3] for c in chunk]))
            for i, (name, m, up, down) in enumerate(chunk):
                n_full = min(up.shape[0], down.shape[1])
                cap = rank if rank is not None else m.rank
                r = choose_rank(S[i], n_full, cap, dynamic, param)
                new_up, new_down = U[i, :, :r] * S[i, :r], Vh[i, :r]
                alpha = m.scale * r
                store(name, m, new_up, new_down, alpha, tensors)
                s2 = (S[i].double() * m.scale) ** 2
                norms.append(float(s2.sum()))
                errs.append(float(s2[r:].sum()))
                res.ranks[name] = r
                res.errors[name] = (errs[-1] / norms[-1]) ** 0.5 if norms[-1] > 0 else 0.0
                alphas.append(alpha)
                if verbose:
                    st = spectrum_stats(S[i], r)
                    res.messages.append(f"{name}: rank {m.rank} -> {r}, sum(S) retained {st['sum_retained']:.1%}, "
                                        f"fro retained {st['fro_retained']:.1%}, max ratio {st['max_ratio']:.1f}")
                done += 1
                if progress:
                    progress(done, len(f.modules), name)
    res.overall_error = overall(norms, errs)
    md = {k: v for k, v in f.metadata.items() if not k.startswith("sshs_")}
    dim, alp = dim_alpha_text(list(res.ranks.values()), alphas, dynamic=dynamic is not None)
    md.update({"ss_network_dim": dim, "ss_network_alpha": alp,
               "ss_training_comment": (f"dynamic resize with {dynamic}: {param}" if dynamic
                                       else f"resized to rank {rank}") + f" from {path}"})
    md.setdefault("ss_network_module", "networks.lora")
    md["alloy_lora_recipe"] = recipe_json("resize", lora=path, rank=rank, dynamic=dynamic, param=param)
    res.path = save_lora(out, tensors, md, dtype=parse_out_dtype(dtype, f.dtype), overwrite=overwrite)
    res.modules = len(f.modules)
    res.seconds = time.time() - t0
    return res


def store(name, m, up2d, down2d, alpha, tensors):
    """New factors in the module's original layout (conv ups are out×r×1×1, downs r×in×k×k)."""
    up0, down0 = m.weights["lora_up.weight"], m.weights["lora_down.weight"]
    r = up2d.shape[1]
    up = up2d.reshape(up0.shape[0], r, *up0.shape[2:])
    down = down2d.reshape(r, *down0.shape[1:])
    tensors[f"{name}.lora_up.weight"] = up.cpu()
    tensors[f"{name}.lora_down.weight"] = down.cpu()
    tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
