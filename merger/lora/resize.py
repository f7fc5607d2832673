"""Resize a LoRA (kohya resize_lora): per module, SVD of up·down (exact factored SVD in float64),
keep r singular values — fixed ``rank`` (``conv_rank`` for 3×3 convs) or dynamic ``sv_ratio`` /
``sv_fro`` / ``sv_cumulative`` capped by them (rule in `linalg.choose_rank`; unlike kohya, never
above the module's input rank) — up = U_r·S_r, down = V_rᵀ, alpha = (alpha_old/rank_old)·r so that
a strength means the same as before. The input's metadata is kept; dim/alpha become "Dynamic" for
dynamic resizes and `ss_training_comment` is kohya's ("dimension is resized from …; <old comment>").
"""
from __future__ import annotations

import json
import time

import torch

from merger.errors import AlloyError
from merger.lora.common import LoraResult, overall, pick_device
from merger.lora.formats import load_lora
from merger.lora.keymap import lora_arch
from merger.lora.linalg import DYNAMIC, choose_rank, flat, orth_factor_svd, spectrum_stats
from merger.lora.output import file_name, kohya_dims, parse_out_dtype, recipe_json, save_lora
from merger.precision import full_float32

BATCH = 64


def check_args(rank, dynamic, param, conv_rank=None):
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
    if conv_rank is not None and conv_rank < 1:
        raise AlloyError("--conv-rank must be at least 1")


@full_float32()
def resize_lora(path: str, out: str, *, rank: int | None = None, dynamic: str | None = None,
                param: float | None = None, conv_rank: int | None = None, dtype: str | None = "keep",
                overwrite: bool = False, device: str | None = "auto", verbose: bool = False,
                progress=None) -> LoraResult:
    """Resize the LoRA at `path` into `out` (see module docstring). With `verbose`, one line per
    module (retained Σσ and Frobenius fractions, σ₁/σ_r) goes to the result's messages."""
    t0 = time.time()
    check_args(rank, dynamic, param, conv_rank)
    f = load_lora(path, "LoRA")
    for name, m in f.modules.items():
        if m.kind != "lora" or "lora_mid.weight" in m.weights:
            raise AlloyError(f"{path}: module {name!r} is {m.kind if m.kind != 'lora' else 'CP LoCon'}; "
                             "only LoRA/LoCon modules can be resized")
    dev = pick_device(device)
    res = LoraResult("resize", arch=lora_arch(f.modules, f.metadata))
    groups: dict[tuple, list] = {}
    for name, m in f.modules.items():
        up = flat(m.weights["lora_up.weight"]).to(dev, torch.float64)
        down = flat(m.weights["lora_down.weight"]).to(dev, torch.float64)
        groups.setdefault((tuple(up.shape), tuple(down.shape)), []).append((name, m, up, down))
    tensors, norms, errs, dims, done = {}, [], [], [], 0
    for items in groups.values():
        for b in range(0, len(items), BATCH):
            chunk = items[b:b + BATCH]
            U, S, Vh = orth_factor_svd(torch.stack([c[2] for c in chunk]), torch.stack([c[3] for c in chunk]))
            for i, (name, m, up, down) in enumerate(chunk):
                n_full = min(up.shape[0], down.shape[1])
                is3 = m.kernel not in (None, (1, 1))
                cap = conv_rank if is3 and conv_rank is not None else rank
                r = choose_rank(S[i], n_full, m.rank if cap is None else cap, dynamic, param)
                new_up, new_down = U[i, :, :r] * S[i, :r], Vh[i, :r]
                alpha = m.scale * r
                store(name, m, new_up, new_down, alpha, tensors)
                s2 = (S[i].double() * m.scale) ** 2
                norms.append(float(s2.sum()))
                errs.append(float(s2[r:].sum()))
                res.ranks[name] = r
                res.errors[name] = (errs[-1] / norms[-1]) ** 0.5 if norms[-1] > 0 else 0.0
                dims.append((r, alpha, is3))
                if verbose:
                    st = spectrum_stats(S[i], r)
                    res.messages.append(f"{name}: rank {m.rank} -> {r}, sum(S) retained {st['sum_retained']:.1%}, "
                                        f"fro retained {st['fro_retained']:.1%}, max ratio {st['max_ratio']:.1f}")
                done += 1
                if progress:
                    progress(done, len(f.modules), name)
    res.overall_error = overall(norms, errs)
    md = {k: v for k, v in f.metadata.items() if not k.startswith("sshs_")}
    md.update(resize_metadata(f, dims, rank, conv_rank, dynamic, param))
    md["alloy_lora_recipe"] = recipe_json("resize", lora=file_name(path), rank=rank, conv_rank=conv_rank,
                                          dynamic=dynamic, param=param)
    res.path = save_lora(out, tensors, md, dtype=parse_out_dtype(dtype, f.dtype), overwrite=overwrite)
    res.modules = len(f.modules)
    res.seconds = time.time() - t0
    return res


def resize_metadata(f, dims, rank, conv_rank, dynamic, param) -> dict[str, str]:
    """kohya resize_lora's metadata updates: dim/alpha ("Dynamic" for dynamic resizes), conv args
    when 3×3 modules exist, and the comment with the old rank before the input's own comment."""
    old = max((m.rank or 0) for m in f.modules.values())
    comment = f.metadata.get("ss_training_comment", "")
    d = kohya_dims(dims, as_float=True)
    md = {"ss_network_module": f.metadata.get("ss_network_module", "networks.lora")}
    if dynamic:
        md.update(ss_network_dim="Dynamic", ss_network_alpha="Dynamic",
                  ss_training_comment=f"Dynamic resize with {dynamic}: {param} from {old}; {comment}")
    else:
        conv = "" if conv_rank in (None, rank) else f" (conv: {conv_rank})"
        md.update(ss_network_dim=d["dim"], ss_network_alpha=d["alpha"],
                  ss_training_comment=f"dimension is resized from {old} to {rank}{conv}; {comment}")
    if d["conv_dim"] is not None:
        conv_alpha = d["conv_alpha"] if not dynamic else "Dynamic"
        md["ss_network_args"] = json.dumps({**args_of(f.metadata), "conv_dim": d["conv_dim"] if not dynamic
                                            else "Dynamic", "conv_alpha": conv_alpha})
    return md


def args_of(metadata) -> dict:
    try:
        a = json.loads(metadata.get("ss_network_args") or "{}")
    except ValueError:
        return {}
    return a if isinstance(a, dict) else {}


def store(name, m, up2d, down2d, alpha, tensors):
    """New factors in the module's original layout (conv ups are out×r×1×1, downs r×in×k×k)."""
    up0, down0 = m.weights["lora_up.weight"], m.weights["lora_down.weight"]
    r = up2d.shape[1]
    up = up2d.reshape(up0.shape[0], r, *up0.shape[2:])
    down = down2d.reshape(r, *down0.shape[1:])
    tensors[f"{name}.lora_up.weight"] = up.cpu()
    tensors[f"{name}.lora_down.weight"] = down.cpu()
    tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
