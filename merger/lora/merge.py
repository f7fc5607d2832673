"""Merge LoRAs into one LoRA.

* ``concat`` (exact): per module, with cᵢ = rᵢ·bᵢ·(alphaᵢ/rankᵢ): up = [c₁up₁ | c₂up₂ | …],
  down = [down₁; down₂; …], alpha = rank = Σ rankᵢ  ⇒  (alpha/rank)·up·down = Σ cᵢ upᵢ downᵢ.
* ``concat`` with ``kohya_alpha`` (kohya merge_lora.py --concat, for its exact file): with
  sᵢ = √(alphaᵢ/alpha₁)·rᵢ·bᵢ: up = [|s₁|up₁ | |s₂|up₂ | …], down = [s₁down₁; s₂down₂; …],
  alpha = alpha₁ (the first LoRA's), so ΔW = Σ (alphaᵢ/Σrankⱼ)·rᵢ|rᵢ|·upᵢdownᵢ — not the sum.
* ``svd``: ΔW = Σ cᵢ upᵢ downᵢ in float32 (never formed: exact factored SVD, see
  `linalg.orth_factor_svd`), keep the top k = min(rank, out, in·k·k) (``conv_rank`` for 3×3),
  up = U_k·S_k, down = V_kᵀ, alpha = k; both clamped to ±h, h = the ``clamp_quantile`` (default
  0.99, as kohya's svd_merge_lora; 1 = no clamp) of the signed values of [up, down].
Relative Frobenius error ‖ΔW − ΔW'‖/‖ΔW‖ is reported per module and overall.
"""
from __future__ import annotations

import math
import time

import torch

from merger.errors import AlloyError
from merger.lora.blocks import LoraSpec
from merger.lora.common import LoraResult, block_weight_fn, common_arch, load_specs, overall, pick_device
from merger.lora.linalg import (CLAMP_QUANTILE, check_quantile, clamp_factors, flat, lowrank_fro2, module_delta,
                                orth_factor_svd, full_svd)
from merger.lora.output import kohya_dims, network_metadata, parse_out_dtype, recipe_json, save_lora, spec_names
from merger.precision import full_float32

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


def kohya_alpha_of(m) -> float:
    """A module's alpha as kohya's merge_lora reads it: the float32 value, or the rank when absent."""
    if m.alpha is None:
        return float(m.rank)
    return float(torch.tensor(m.alpha, dtype=torch.float32))


def concat_module_kohya(name, parts):
    """kohya merge_lora.py --concat of one module (see module docstring) -> (tensors, rank, alpha₁)."""
    if any("lora_mid.weight" in m.weights for _, m in parts):
        raise AlloyError(f"module {name!r} is a CP-decomposed LoRA; kohya's concat cannot merge it")
    module_shape(name, parts)
    base = kohya_alpha_of(parts[0][1])
    ups, downs = [], []
    for c, m in parts:
        s = math.sqrt(kohya_alpha_of(m) / base) * c
        ups.append(m.weights["lora_up.weight"].float() * abs(s))
        downs.append(m.weights["lora_down.weight"].float() * s)
    up, down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
    return {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down,
            f"{name}.alpha": torch.tensor(base, dtype=torch.float32)}, down.shape[0], base


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
        if clamp_q >= 1:
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


@full_float32()
def merge_loras(specs: list[LoraSpec], out: str, *, mode: str = "svd", rank: int | None = None,
                conv_rank: int | None = None, clamp_quantile: float | None = None, kohya_alpha: bool = False,
                dtype: str | None = "keep", overwrite: bool = False, presets: dict | None = None,
                device: str | None = "auto", progress=None) -> LoraResult:
    """Merge `specs` into `out` by ``concat`` or ``svd`` (see module docstring); `clamp_quantile`
    None means kohya's 0.99."""
    t0 = time.time()
    if mode not in ("svd", "concat"):
        raise AlloyError(f"unknown LoRA merge mode {mode!r}; use svd or concat")
    if mode == "svd" and (rank is None or rank < 1):
        raise AlloyError("an SVD merge needs --rank N (N ≥ 1)")
    if kohya_alpha and mode != "concat":
        raise AlloyError("--kohya-alpha applies to --concat merges only")
    q = check_quantile(CLAMP_QUANTILE if clamp_quantile is None else clamp_quantile)
    files = load_specs(specs)
    arch = common_arch(files)
    res = LoraResult("merge", arch=arch)
    modules = gather(files, specs, arch, presets, res.messages)
    dev = pick_device(device)
    tensors: dict[str, torch.Tensor] = {}
    norms, errs, dims = [], [], []
    if mode == "concat":
        merge_concat(modules, kohya_alpha, tensors, res, dims, progress)
    else:
        merge_svd(modules, rank, conv_rank or rank, q, dev, tensors, res, norms, errs, dims, progress)
        res.overall_error = overall(norms, errs)
    md = network_metadata(arch, **kohya_dims(dims, as_float=mode == "concat"), title=out,
                          merged_from=[s.path for s in specs])
    md["alloy_lora_recipe"] = recipe_json("merge", mode=mode, rank=rank, conv_rank=conv_rank,
                                          clamp_quantile=q if mode == "svd" else None, kohya_alpha=kohya_alpha,
                                          loras=spec_names(specs))
    out_dtype = parse_out_dtype(dtype, files[0].dtype)
    res.path = save_lora(out, tensors, md, dtype=out_dtype, overwrite=overwrite)
    res.modules = len(modules)
    res.seconds = time.time() - t0
    return res


def merge_concat(modules, kohya_alpha, tensors, res, dims, progress):
    """Concat every module (exact, or kohya's weighting, whose error against the exact sum is
    reported); appends (rank, alpha, 3×3) to `dims`."""
    norms, errs = [], []
    for i, (name, parts) in enumerate(modules.items()):
        if kohya_alpha:
            t, r, a = concat_module_kohya(name, parts)
            L, R = factors_of(parts, "cpu")
            up, down = flat(t[f"{name}.lora_up.weight"]) * (a / r), flat(t[f"{name}.lora_down.weight"])
            n2 = lowrank_fro2(L.double(), R.double())
            e2 = lowrank_fro2(torch.cat([L, -up], 1).double(), torch.cat([R, down], 0).double())
            norms.append(n2)
            errs.append(max(e2, 0.0))
            res.errors[name] = (errs[-1] / n2) ** 0.5 if n2 > 0 else 0.0
        else:
            t, r = concat_module(name, parts)
            a = float(r)
            res.errors[name] = 0.0
        tensors.update(t)
        res.ranks[name] = r
        k = t[f"{name}.lora_down.weight"].shape[2:]
        dims.append((parts[0][1].rank if kohya_alpha else r, a, len(k) == 2 and tuple(k) != (1, 1)))
        if progress:
            progress(i + 1, len(modules), name)
    if kohya_alpha:
        res.messages.append("kohya concat: each LoRA is weighted (alphaᵢ/Σ ranks)·ratio·|ratio| instead of "
                            "ratio·alphaᵢ/rankᵢ; the result is not the sum of the LoRAs")
    res.overall_error = overall(norms, errs) if kohya_alpha else 0.0


def merge_svd(modules, rank, conv_rank, clamp_q, dev, tensors, res, norms, errs, dims, progress):
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
            emit(name, up, down, up_t, down_t, kernel, tensors, res, norms, errs, dims, n2, e2)
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
                emit(name, up, down, up_t, down_t, kernel, tensors, res, norms, errs, dims, n2, e2)
                done += 1
                if progress:
                    progress(done, len(modules), name)


def emit(name, up, down, up_t, down_t, kernel, tensors, res, norms, errs, dims, n2, e2):
    """Store one module's new factors (conv shapes restored) and its error."""
    k = up.shape[1]
    if kernel is not None:
        up = up.reshape(up_t[0], k, 1, 1)
        down = down.reshape(k, *down_t)
    tensors[f"{name}.lora_up.weight"] = up.cpu()
    tensors[f"{name}.lora_down.weight"] = down.cpu()
    tensors[f"{name}.alpha"] = torch.tensor(float(k))
    res.ranks[name] = k
    dims.append((k, k, kernel not in (None, (1, 1))))
    res.errors[name] = (e2 / n2) ** 0.5 if n2 > 0 else 0.0
    norms.append(n2)
    errs.append(e2)
