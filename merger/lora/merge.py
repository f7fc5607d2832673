"""Merge LoRAs into one LoRA.

* ``concat`` (exact): per module, with cᵢ = rᵢ·bᵢ·(alphaᵢ/rankᵢ): up = [c₁up₁ | c₂up₂ | …],
  down = [down₁; down₂; …], alpha = rank = Σ rankᵢ  ⇒  (alpha/rank)·up·down = Σ cᵢ upᵢ downᵢ.
* ``svd``: ΔW = Σ cᵢ upᵢ downᵢ in float32 (never formed: exact factored SVD, see
  `linalg.orth_factor_svd`), keep the top k = min(rank, out, in·k·k) (``conv_rank`` for 3×3),
  up = U_k·S_k, down = V_kᵀ, alpha = k, optional clamp at a quantile (kohya svd_merge_lora).
Relative Frobenius error ‖ΔW − ΔW'‖/‖ΔW‖ is reported per module and overall.
"""
from __future__ import annotations

import time

import torch

from merger.errors import AlloyError
from merger.lora.blocks import LoraSpec
from merger.lora.common import LoraResult, block_weight_fn, common_arch, load_specs, overall, pick_device
from merger.lora.linalg import clamp_factors, flat, lowrank_fro2, module_delta, orth_factor_svd, full_svd
from merger.lora.output import dim_alpha_text, network_metadata, parse_out_dtype, recipe_json, save_lora

BATCH = 64      # modules of one shape per batched SVD call


def gather(files, specs, arch, presets, messages):
    """{module name: [(coefficient, LoraModule)]} in first-seen order; coefficient = rᵢ·bᵢ."""
    out: dict[str, list] = {}
    for f, s in zip(files, specs):
        bw = block_weight_fn(s, arch, presets, messages)
        for name, m in f.modules.items():
            if m.kind != "lora":
                raise AlloyError(f"{f.path}: module {name!r} is {m.kind}; only LoRA/LoCon files can be merged "
                                 "(LoHa/LoKr can be baked into a checkpoint)")
            out.setdefault(name, []).append((s.ratio * bw(name), m))
    return out


def module_shape(name: str, parts) -> tuple[tuple, tuple, bool]:
    """(up shape tail, down shape tail, has_mid) agreed by all inputs of a module."""
    ups = {(m.weights["lora_up.weight"].shape[0],) for _, m in parts}
    downs = {tuple(m.weights["lora_down.weight"].shape[1:]) if "lora_mid.weight" not in m.weights
             else (m.weights["lora_down.weight"].shape[1],) + tuple(m.weights["lora_mid.weight"].shape[2:])
             for _, m in parts}
    if len(ups) != 1 or len(downs) != 1:
        raise AlloyError(f"module {name!r} has different shapes in the LoRAs being merged")
    return next(iter(ups)), next(iter(downs)), any("lora_mid.weight" in m.weights for _, m in parts)


def concat_module(name, parts):
    """Exact concat of one module -> (tensors, rank)."""
    if any("lora_mid.weight" in m.weights for _, m in parts):
        raise AlloyError(f"module {name!r} is a CP-decomposed LoCon; use --rank (SVD) to merge it")
    module_shape(name, parts)
    ups = [m.weights["lora_up.weight"].float() * (c * m.scale) for c, m in parts]
    downs = [m.weights["lora_down.weight"].float() for _, m in parts]
    up, down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
    r = down.shape[0]
    return {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down,
            f"{name}.alpha": torch.tensor(float(r))}, r


def factors_of(parts, device):
    """(L, R) with ΔW₂ᴅ = L@R: L = [cᵢ·scaleᵢ·upᵢ], R = [downᵢ] (flattened, float32)."""
    L = torch.cat([flat(m.weights["lora_up.weight"]).to(device, torch.float32) * (c * m.scale) for c, m in parts], 1)
    R = torch.cat([flat(m.weights["lora_down.weight"]).to(device, torch.float32) for _, m in parts], 0)
    return L, R


def svd_group(names, Ls, Rs, ranks, clamp_q):
    """Batched factored SVD of same-shape modules -> [(up₂ᴅ, down₂ᴅ, norm², err²)]."""
    U, S, Vh = orth_factor_svd(torch.stack(Ls), torch.stack(Rs))
    out = []
    for i, k in enumerate(ranks):
        up = U[i, :, :k] * S[i, :k]
        down = Vh[i, :k, :]
        up, down = clamp_factors(up, down, clamp_q)
        n2 = float((S[i].double() ** 2).sum())
        if clamp_q is None:
            e2 = float((S[i, k:].double() ** 2).sum())
        else:
            e2 = lowrank_fro2(torch.cat([Ls[i], -up], 1).double(), torch.cat([Rs[i], down], 0).double())
        out.append((up, down, n2, max(e2, 0.0)))
    return out


def svd_full(delta2d, k, clamp_q):
    U, S, Vh = full_svd(delta2d)
    up, down = clamp_factors(U[:, :k] * S[:k], Vh[:k], clamp_q)
    n2 = float((delta2d.double() ** 2).sum())
    e2 = float(((delta2d - up @ down).double() ** 2).sum())
    return up, down, n2, e2


def merge_loras(specs: list[LoraSpec], out: str, *, mode: str = "svd", rank: int | None = None,
                conv_rank: int | None = None, clamp_quantile: float | None = None, dtype: str | None = "keep",
                overwrite: bool = False, presets: dict | None = None, device: str | None = "auto",
                progress=None) -> LoraResult:
    """Merge `specs` into `out` by ``concat`` or ``svd`` (see module docstring)."""
    t0 = time.time()
    if mode not in ("svd", "concat"):
        raise AlloyError(f"unknown LoRA merge mode {mode!r}; use svd or concat")
    if mode == "svd" and (rank is None or rank < 1):
        raise AlloyError("an SVD merge needs --rank N (N ≥ 1)")
    if clamp_quantile is not None and not 0 < clamp_quantile <= 1:
        raise AlloyError("--clamp-quantile must be in (0, 1]")
    files = load_specs(specs)
    arch = common_arch(files)
    res = LoraResult("merge", arch=arch)
    modules = gather(files, specs, arch, presets, res.messages)
    dev = pick_device(device)
    tensors: dict[str, torch.Tensor] = {}
    norms, errs, alphas = [], [], []
    if mode == "concat":
        for i, (name, parts) in enumerate(modules.items()):
            t, r = concat_module(name, parts)
            tensors.update(t)
            res.ranks[name], res.errors[name] = r, 0.0
            alphas.append(float(r))
            if progress:
                progress(i + 1, len(modules), name)
        res.overall_error = 0.0
    else:
        merge_svd(modules, rank, conv_rank or rank, clamp_quantile, dev, tensors, res, norms, errs, progress)
        res.overall_error = overall(norms, errs)
        alphas = [float(r) for r in res.ranks.values()]
    ranks = list(res.ranks.values())
    dim, alpha = dim_alpha_text(ranks, alphas, dynamic=False)
    md = network_metadata(arch, dim, alpha, conv_dim=conv_rank, conv_alpha=conv_rank)
    md["alloy_lora_recipe"] = recipe_json("merge", mode=mode, rank=rank, conv_rank=conv_rank,
                                          clamp_quantile=clamp_quantile, loras=[s.to_dict() for s in specs])
    out_dtype = parse_out_dtype(dtype, files[0].dtype)
    res.path = save_lora(out, tensors, md, dtype=out_dtype, overwrite=overwrite)
    res.modules = len(modules)
    res.seconds = time.time() - t0
    return res


def merge_svd(modules, rank, conv_rank, clamp_q, dev, tensors, res, norms, errs, progress):
    """SVD path: factored + batched for plain LoRA/LoCon, full SVD for CP (lora_mid) modules."""
    groups: dict[tuple, list] = {}
    done = 0
    for name, parts in modules.items():
        up_t, down_t, has_mid = module_shape(name, parts)
        kernel = tuple(down_t[1:]) if len(down_t) == 3 else None
        is3 = kernel is not None and kernel != (1, 1)
        cap = conv_rank if is3 else rank
        if has_mid:
            delta = sum(c * module_delta(m, dtype=torch.float32, device=dev) for c, m in parts)
            d2 = delta.reshape(delta.shape[0], -1)
            k = min(cap, *d2.shape)
            up, down, n2, e2 = svd_full(d2, k, clamp_q)
            emit(name, up, down, up_t, down_t, kernel, tensors, res, norms, errs, n2, e2)
            done += 1
            continue
        L, R = factors_of(parts, dev)
        k = min(cap, L.shape[0], R.shape[1], L.shape[1])
        groups.setdefault((tuple(L.shape), tuple(R.shape)), []).append((name, L, R, k, up_t, down_t, kernel))
    for items in groups.values():
        for b in range(0, len(items), BATCH):
            chunk = items[b:b + BATCH]
            outs = svd_group([c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk],
                             [c[3] for c in chunk], clamp_q)
            for (name, _, _, _, up_t, down_t, kernel), (up, down, n2, e2) in zip(chunk, outs):
                emit(name, up, down, up_t, down_t, kernel, tensors, res, norms, errs, n2, e2)
                done += 1
                if progress:
                    progress(done, len(modules), name)


def emit(name, up, down, up_t, down_t, kernel, tensors, res, norms, errs, n2, e2):
    """Store one module's new factors (conv shapes restored) and its error."""
    k = up.shape[1]
    if kernel is not None:
        up = up.reshape(up_t[0], k, 1, 1)
        down = down.reshape(k, *down_t)
    tensors[f"{name}.lora_up.weight"] = up.cpu()
    tensors[f"{name}.lora_down.weight"] = down.cpu()
    tensors[f"{name}.alpha"] = torch.tensor(float(k))
    res.ranks[name] = k
    res.errors[name] = (e2 / n2) ** 0.5 if n2 > 0 else 0.0
    norms.append(n2)
    errs.append(e2)
