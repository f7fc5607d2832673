"""LoRA math: ΔW of each module kind, factored SVD, rank rules, quantile clamp, errors.

Conventions (kohya sd-scripts / the WebUI's built-in Lora):
* LoRA/LoCon: ΔW = (alpha/rank)·up·down; a 3×3 LoCon composes down (r×in×3×3) then up
  (out×r×1×1): ΔW = (up₂ᴅ @ down.reshape(r, in·9)).reshape(out, in, 3, 3). With `lora_mid` (CP):
  ΔW[i,j,k,l] = Σ_nm mid[n,m,k,l]·up[i,n]·down[m,j].
* LoHa: ΔW = (alpha/r)·(w1a@w1b) ⊙ (w2a@w2b) (Tucker cores t1/t2 when present), r = w1b rows.
* LoKr: ΔW = (alpha/r)·kron(w1, w2) with w1 = lokr_w1 or w1a@w1b, w2 likewise (t2: Tucker);
  r = rows of w1b or w2b; scale 1 when neither factor is low-rank.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from merger.lora.formats import LoraModule

CLAMP_QUANTILE = 0.99         # kohya svd_merge_lora / extract_lora_from_models default
MIN_SV = 1e-6                 # kohya resize_lora: a spectrum whose σ₁ is below this is "zero"
TORCH_QUANTILE_MAX = 1 << 24
RSVD_OVERSAMPLE = 16          # randomized SVD (extract), see top_svd: extra subspace columns,
RSVD_TOL = 1e-5               # stop when a step adds less than this fraction of ‖A‖² to the top k,
RSVD_MAX_ITERS = 12           # or after this many subspace steps
CHOLQR_ROWS = 512             # orthonormal(): CholeskyQR2 from this many rows on  # torch.quantile refuses larger inputs


def flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def cp_weight(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Tucker/CP rebuild: W[p,r,k,l] = Σ_ij t[i,j,k,l]·wa[i,p]·wb[j,r] (LyCORIS `make_weight_cp`)."""
    return torch.einsum("ijkl,jr,ip->prkl", t, flat(wb), flat(wa))


def lora_factors(m: LoraModule, dtype=torch.float32, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with ΔW₂ᴅ = scale·U@V for a plain LoRA/LoCon module (U: out×r, V: r×in·k·k)."""
    up = flat(m.weights["lora_up.weight"].to(device, dtype))
    down = flat(m.weights["lora_down.weight"].to(device, dtype))
    return up * m.scale, down


def module_delta(m: LoraModule, shape: tuple | None = None, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """ΔW of one module (scale included, ratio not), reshaped to `shape` when given."""
    w = {k: v.to(device, dtype) for k, v in m.weights.items()}
    if m.kind == "lora":
        up, down = flat(w["lora_up.weight"]), w["lora_down.weight"]
        if "lora_mid.weight" in w:
            mid = w["lora_mid.weight"]
            d = torch.einsum("nmkl,in,mj->ijkl", mid, up, flat(down))
        else:
            d = up @ flat(down)
            if down.dim() == 4:
                d = d.reshape(up.shape[0], *down.shape[1:])
    elif m.kind == "loha":
        w1 = cp_weight(w["hada_t1"], w["hada_w1_a"], w["hada_w1_b"]) if "hada_t1" in w \
            else flat(w["hada_w1_a"]) @ flat(w["hada_w1_b"])
        w2 = cp_weight(w["hada_t2"], w["hada_w2_a"], w["hada_w2_b"]) if "hada_t2" in w \
            else flat(w["hada_w2_a"]) @ flat(w["hada_w2_b"])
        d = w1 * w2 if w1.shape == w2.shape else w1.reshape(w2.shape) * w2
    elif m.kind == "lokr":
        w1 = w["lokr_w1"] if "lokr_w1" in w else flat(w["lokr_w1_a"]) @ flat(w["lokr_w1_b"])
        if "lokr_w2" in w:
            w2 = w["lokr_w2"]
        elif "lokr_t2" in w:
            w2 = cp_weight(w["lokr_t2"], w["lokr_w2_a"], w["lokr_w2_b"])
        else:
            w2 = flat(w["lokr_w2_a"]) @ flat(w["lokr_w2_b"])
        d = torch.kron(flat(w1), flat(w2))       # == 4-D kron flattened (see module docstring)
    else:
        raise ValueError(m.kind)
    d = d * m.scale
    if shape is not None and d.numel() == math.prod(shape):
        d = d.reshape(shape)
    return d


def orth_factor_svd(U: torch.Tensor, V: torch.Tensor):
    """Exact thin SVD of A = U@V (U: [B,]m×R, V: [B,]R×n) without forming A:
    U = Q₁R₁, Vᵀ = Q₂R₂, R₁R₂ᵀ = u·s·vᵀ  ⇒  A = (Q₁u)·diag(s)·(Q₂v)ᵀ. Cost O((m+n)R²)."""
    q1, r1 = torch.linalg.qr(U)
    q2, r2 = torch.linalg.qr(V.transpose(-1, -2))
    u, s, vh = torch.linalg.svd(r1 @ r2.transpose(-1, -2))
    return q1 @ u, s, vh @ q2.transpose(-1, -2)


def full_svd(A: torch.Tensor):
    """Thin SVD of a ([B,]m×n) matrix."""
    return torch.linalg.svd(A, full_matrices=False)


def orthonormal(Y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the columns of Y ([B,]m×l, l small). Tall Y (m ≥ CHOLQR_ROWS):
    CholeskyQR2 (Gram and Cholesky in float64, applied twice: orthogonal to rounding, and far
    faster than LAPACK's QR of a tall thin matrix); Householder QR otherwise or when the Gram
    matrix is singular."""
    if Y.shape[-2] >= CHOLQR_ROWS:
        Q, bad = Y.double(), False
        for _ in range(2):
            L, info = torch.linalg.cholesky_ex(Q.transpose(-1, -2) @ Q)
            Q = torch.linalg.solve_triangular(L, Q.transpose(-1, -2), upper=False).transpose(-1, -2)
            bad = bad or bool(info.any())
        if not bad and bool(torch.isfinite(Q).all()):
            return Q.to(Y.dtype)
    return torch.linalg.qr(Y).Q


def top_svd(A: torch.Tensor, k: int, *, oversample: int = RSVD_OVERSAMPLE, tol: float = RSVD_TOL,
            max_iters: int = RSVD_MAX_ITERS, seed: int = 0, norm2: torch.Tensor | None = None):
    """Top-k thin SVD of a batch A ([B,]m×n) by randomized subspace iteration (Halko, Martinsson,
    Tropp 2011, alg. 4.4): Ω ~ N(0,1) n×l (l = k + oversample, seeded), Q = orth(AΩ), then
    Q = orth(A·orth((QᵀA)ᵀ)) until the captured energy Σ_{i≤k}σ̃ᵢ² (σ̃ = singular values of QᵀA)
    grows by less than `tol`·‖A‖² in one step (at most `max_iters` steps), and the exact SVD of the
    small QᵀA (l×n): A ≈ (Q·u)·diag(s)·vh. Cost O(mnl) per step instead of O(mn·min(m,n)); the
    exact SVD when l ≥ min(m, n)/2. `norm2`: ‖A‖² per matrix when known. Returns (U, S, Vh, steps)."""
    m, n = A.shape[-2:]
    l = k + oversample
    if 2 * l >= min(m, n):
        U, S, Vh = full_svd(A)
        return U[..., :k], S[..., :k], Vh[..., :k, :], 0
    gen = torch.Generator(device=A.device).manual_seed(seed)
    omega = torch.randn(*A.shape[:-2], n, l, generator=gen, device=A.device, dtype=A.dtype)
    if norm2 is None:
        norm2 = torch.linalg.vector_norm(A, dim=(-2, -1)).double() ** 2
    total = norm2.clamp_min(1e-300)
    Q = orthonormal(A @ omega)
    energy = None
    steps = 0
    while steps < max_iters:
        Bt = Q.transpose(-1, -2) @ A                                   # l×n: QᵀA
        Bd = Bt.double()
        e = torch.linalg.eigvalsh(Bd @ Bd.transpose(-1, -2))[..., -k:].sum(-1) / total   # top σ̃²
        steps += 1
        Q = orthonormal(A @ orthonormal(Bt.transpose(-1, -2)))
        if energy is not None and float((e - energy).max()) < tol:
            break
        energy = e
    u, s, vh = torch.linalg.svd(Q.transpose(-1, -2) @ A, full_matrices=False)
    return (Q @ u)[..., :k], s[..., :k], vh[..., :k, :], steps


def quantile(x: torch.Tensor, q: float) -> float:
    """torch.quantile (linear interpolation) of a flat tensor; numpy for inputs torch refuses."""
    x = x.reshape(-1).float()
    if x.numel() <= TORCH_QUANTILE_MAX:
        return float(torch.quantile(x, q))
    return float(np.quantile(x.cpu().numpy(), q))


def check_quantile(q: float) -> float:
    """A clamp quantile in (0, 1] (1 = no clamp); AlloyError otherwise."""
    from merger.errors import AlloyError

    if not (isinstance(q, (int, float)) and 0 < q <= 1):
        raise AlloyError(f"--clamp-quantile must be in (0, 1], got {q}")
    return float(q)


def clamp_factors(up: torch.Tensor, down: torch.Tensor, q: float | None):
    """kohya's clamp: h = quantile(concat(up, down), q) (signed values), both clamped to [−h, h]."""
    if q is None or q >= 1:
        return up, down
    h = quantile(torch.cat([up.reshape(-1), down.reshape(-1)]), q)
    return up.clamp(-h, h), down.clamp(-h, h)


def lowrank_fro2(L: torch.Tensor, R: torch.Tensor) -> float:
    """‖L@R‖²_F = Σ (LᵀL) ⊙ (RRᵀ), without forming L@R."""
    return float(((L.transpose(-1, -2) @ L) * (R @ R.transpose(-1, -2))).sum())


def rel_error(L_true, R_true, L_new, R_new) -> float:
    """‖L_true R_true − L_new R_new‖_F / ‖L_true R_true‖_F (0 when the target is zero)."""
    L = torch.cat([L_true, -L_new], dim=1).double()
    R = torch.cat([R_true, R_new], dim=0).double()
    den = lowrank_fro2(L_true.double(), R_true.double())
    if den <= 0:
        return 0.0
    return math.sqrt(max(lowrank_fro2(L, R), 0.0) / den)


# ---------------------------------------------------------------- rank rules (kohya resize_lora)
def count_sv_ratio(S: torch.Tensor, target: float) -> int:
    """#σ with σ > σ₁/target."""
    return int((S > S[0] / target).sum())


def count_sv_cumulative(S: torch.Tensor, target: float) -> int:
    """Smallest k with Σ_{i≤k}σᵢ / Σσ ≥ target (searchsorted, left)."""
    c = torch.cumsum(S, 0) / S.sum()
    return int(torch.searchsorted(c, torch.tensor(target, dtype=c.dtype))) + 1


def count_sv_fro(S: torch.Tensor, target: float) -> int:
    """Smallest k with √(Σ_{i≤k}σᵢ²)/‖σ‖ ≥ target."""
    c = torch.cumsum(S * S, 0) / (S * S).sum()
    return int(torch.searchsorted(c, torch.tensor(target * target, dtype=c.dtype))) + 1


DYNAMIC = {"sv_ratio": count_sv_ratio, "sv_cumulative": count_sv_cumulative, "sv_fro": count_sv_fro}


def choose_rank(S: torch.Tensor, n_full: int, max_rank: int, method: str | None = None,
                param: float | None = None) -> int:
    """kohya resize_lora's rule. Fixed: r = max_rank. Dynamic: k = count(S, param) clipped to
    [1, n_full−1], then r = k + 1 (kohya's index+1). Always r ≤ max_rank, r = 1 when σ₁ ≤ 1e-6,
    and r ≤ len(S) (a rank-R delta has no more than R non-zero σ)."""
    S = S.double()
    if S.numel() == 0 or float(S[0]) <= MIN_SV:
        return 1
    if method is None:
        r = max_rank
    else:
        k = DYNAMIC[method](S, float(param))
        r = max(1, min(k, n_full - 1)) + 1
    return max(1, min(r, max_rank, S.numel()))


def spectrum_stats(S: torch.Tensor, r: int) -> dict:
    """Retained fractions for --verbose: Σσ kept / Σσ, √Σσ² kept / ‖σ‖, σ₁/σ_r."""
    S = S.double()
    tot, fro = float(S.sum()), float((S * S).sum())
    return {
        "sum_retained": float(S[:r].sum()) / tot if tot else 1.0,
        "fro_retained": math.sqrt(float((S[:r] ** 2).sum()) / fro) if fro else 1.0,
        "max_ratio": float(S[0] / S[r - 1]) if float(S[r - 1]) > 0 else float("inf"),
    }
