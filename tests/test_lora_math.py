"""LoRA math against float64 formulas: deltas, factored SVD, rank rules, clamp, block lists."""
import math

import pytest
import torch
import torch.nn.functional as F

from merger.errors import AlloyError
from merger.lora.blocks import BUILTIN_PRESETS, LBW17, block_values, parse_spec
from merger.lora.formats import LoraModule, build_modules
from merger.lora.linalg import (choose_rank, clamp_factors, module_delta, orth_factor_svd, rel_error, spectrum_stats,
                                top_svd)
from merger.arch import get_arch

G = torch.Generator().manual_seed(1)


def rnd(*s):
    return torch.randn(*s, generator=G, dtype=torch.float64)


def test_linear_delta_is_scaled_product():
    up, down = rnd(6, 3), rnd(3, 5)
    m = LoraModule("x", "lora", {"lora_up.weight": up, "lora_down.weight": down}, alpha=1.5)
    assert torch.allclose(module_delta(m, dtype=torch.float64), (1.5 / 3) * up @ down)


def test_conv3x3_delta_is_composed_convolution():
    up, down = rnd(4, 2, 1, 1), rnd(2, 3, 3, 3)
    m = LoraModule("x", "lora", {"lora_up.weight": up, "lora_down.weight": down}, alpha=2.0)
    d = module_delta(m, dtype=torch.float64)
    x = rnd(1, 3, 7, 7)
    assert torch.allclose(F.conv2d(x, d, padding=1), F.conv2d(F.conv2d(x, down, padding=1), up), atol=1e-10)


def test_loha_and_lokr_deltas():
    a1, b1, a2, b2 = rnd(6, 2), rnd(2, 5), rnd(6, 2), rnd(2, 5)
    m = LoraModule("x", "loha", {"hada_w1_a": a1, "hada_w1_b": b1, "hada_w2_a": a2, "hada_w2_b": b2}, alpha=1.0)
    assert torch.allclose(module_delta(m, dtype=torch.float64), 0.5 * (a1 @ b1) * (a2 @ b2))
    w1, w2a, w2b = rnd(2, 3), rnd(4, 2), rnd(2, 5)
    k = LoraModule("x", "lokr", {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b}, alpha=4.0)
    assert torch.allclose(module_delta(k, dtype=torch.float64), 2.0 * torch.kron(w1, w2a @ w2b))


def test_lokr_conv_equals_4d_kron():
    w1, w2 = rnd(2, 3), rnd(4, 5, 3, 3)
    k = LoraModule("x", "lokr", {"lokr_w1": w1, "lokr_w2": w2})
    want = torch.kron(w1[:, :, None, None], w2)
    assert torch.allclose(module_delta(k, (8, 15, 3, 3), dtype=torch.float64), want)


def test_factored_svd_matches_full_svd():
    U, V = rnd(3, 40, 6).float(), rnd(3, 6, 30).float()
    u, s, vh = orth_factor_svd(U, V)
    s_full = torch.linalg.svdvals((U @ V).double())
    assert torch.allclose(s.double(), s_full[:, :6], rtol=1e-4, atol=1e-4)
    assert torch.allclose((u * s[:, None, :]) @ vh, U @ V, atol=1e-4)


def test_rel_error_is_eckart_young():
    U, V = rnd(30, 8), rnd(8, 20)
    u, s, vh = orth_factor_svd(U, V)
    k = 3
    e = rel_error(U, V, u[:, :k] * s[:k], vh[:k])
    assert e == pytest.approx(math.sqrt(float((s[k:] ** 2).sum() / (s ** 2).sum())), rel=1e-9)


S = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("method,param,want", [
    # sv_fro: cum σ²/Σσ² = [.7606, .9507, .9982, .9994, 1.0]; target .75² = .5625 -> k=1 -> r = k+1 = 2
    ("sv_fro", 0.75, 2),
    ("sv_fro", 0.99, 4),           # .9801 -> k=3 (0.9982 ≥ .9801) -> r=4
    # sv_cumulative: cum σ/Σσ = [.5517, .8276, .9655, 1.0]; 0.9 -> k=3 -> r=4
    ("sv_cumulative", 0.9, 4),
    ("sv_cumulative", 0.5, 2),
    # sv_ratio: σ > 8/10 = 0.8 -> 4 values -> r = 5, capped by max rank 8
    ("sv_ratio", 10.0, 5),
    ("sv_ratio", 1.5, 2),          # σ > 5.33 -> 1 value -> r = 2
])
def test_dynamic_rank_rules(method, param, want):
    assert choose_rank(S, n_full=64, max_rank=8, method=method, param=param) == want


def test_rank_caps_and_zero_matrix():
    assert choose_rank(S, 64, 3, "sv_fro", 0.999) == 3                  # --rank caps
    assert choose_rank(S, 2, 8, "sv_fro", 0.999) == 2                   # clip to n_full-1, then +1
    assert choose_rank(torch.zeros(4), 64, 8, "sv_fro", 0.5) == 1       # zero matrix -> 1
    assert choose_rank(S, 64, 4) == 4                                   # fixed
    st = spectrum_stats(S, 2)
    assert st["fro_retained"] == pytest.approx(math.sqrt(80 / 85.25))
    assert st["max_ratio"] == 2.0


def test_clamp_quantile():
    up = torch.arange(10.0).reshape(5, 2)
    down = -torch.arange(10.0).reshape(2, 5)
    h = float(torch.quantile(torch.cat([up.flatten(), down.flatten()]), 0.9))
    cu, cd = clamp_factors(up, down, 0.9)
    assert cu.max() == pytest.approx(h) and cd.min() >= -h


def test_block_values_and_presets():
    ids = get_arch("sd1").block_ids
    v = block_values("OUTALL", ids, "sd1")
    want = dict(zip(LBW17, [float(x) for x in BUILTIN_PRESETS["OUTALL"].split(",")]))
    assert all(v[b] == want[b] for b in LBW17)
    assert v["IN00"] == 1.0                        # blocks a 17-list does not name keep 1
    v26 = block_values(",".join(["0.5"] * 26), ids, "sd1")
    assert set(v26.values()) == {0.5}
    xl = get_arch("sdxl").block_ids
    assert block_values("1,0,0,0,0,0,1,1,1,1,1,1", xl, "sdxl")["IN04"] == 0.0
    with pytest.raises(AlloyError, match="do not fit"):
        block_values("1,2,3", ids, "sd1")
    with pytest.raises(AlloyError, match="unknown block-weight preset"):
        block_values("NOPE", ids, "sd1")


def test_parse_spec_windows_and_negative():
    s = parse_spec(r"C:\loras\big.safetensors:-1.5:OUTALL")
    assert (s.path, s.ratio, s.blocks) == (r"C:\loras\big.safetensors", -1.5, "OUTALL")
    s = parse_spec(r"D:\x.safetensors:0.7")
    assert (s.path, s.ratio, s.blocks) == (r"D:\x.safetensors", 0.7, None)
    s = parse_spec("a.safetensors:1:1,0,0.5")
    assert (s.path, s.ratio, s.blocks) == ("a.safetensors", 1.0, "1,0,0.5")
    assert parse_spec("plain.safetensors").ratio == 1.0


@pytest.mark.parametrize("tensors,msg", [
    ({"m.lora_down.weight": torch.zeros(2, 3)}, "only one of lora_down/lora_up"),
    ({"m.lora_down.weight": torch.zeros(2, 3), "m.lora_up.weight": torch.zeros(4, 3)}, "rank"),
    ({"m.hada_w1_a": torch.zeros(2, 3)}, "LoHa"),
    ({"m.weird": torch.zeros(2)}, "unsupported type"),
    ({"noparts": torch.zeros(2)}, "not a LoRA weight"),
    ({"m.lora_down.weight": torch.zeros(2, 3, dtype=torch.int64), "m.lora_up.weight": torch.zeros(4, 2)}, "non-float"),
    ({"m.lora_down.weight": torch.zeros(2, 3), "m.lora_up.weight": torch.zeros(4, 2), "m.dora_scale": torch.zeros(4)}, "DoRA"),
    ({}, "no tensors"),
])
def test_malformed_files_give_clear_errors(tensors, msg):
    with pytest.raises(AlloyError, match=msg):
        build_modules(tensors, "LoRA (bad.safetensors)")


@pytest.mark.parametrize("kind", ["noise", "power", "lowrank"])
def test_randomized_top_svd_error_within_1e3_of_exact_and_reproducible(kind):
    g = torch.Generator().manual_seed(3)
    m, n, k = 160, 120, 6                       # l = k + 16 = 22, 2l < 120: the randomized path
    if kind == "noise":
        A = torch.randn(2, m, n, generator=g)
    elif kind == "power":
        u = torch.linalg.qr(torch.randn(2, m, n, generator=g)).Q
        v = torch.linalg.qr(torch.randn(2, n, n, generator=g)).Q
        A = (u * torch.arange(1, n + 1) ** -0.5) @ v.transpose(1, 2)
    else:
        A = torch.randn(2, m, 5, generator=g) @ torch.randn(2, 5, n, generator=g) + 0.01 * torch.randn(2, m, n, generator=g)
    U, S, Vh, steps = top_svd(A, k)
    assert steps >= 1
    for i in range(2):
        s = torch.linalg.svdvals(A[i].double())
        best = math.sqrt(float((s[k:] ** 2).sum() / (s ** 2).sum()))
        got = float((A[i] - (U[i] * S[i]) @ Vh[i]).double().norm() / A[i].double().norm())
        assert best - 1e-6 <= got <= best + 1e-3
        assert torch.allclose(S[i].double(), s[:k], rtol=2e-3, atol=1e-3 * float(s[0]))
    U2, S2, Vh2, _ = top_svd(A, k)
    assert torch.equal(U, U2) and torch.equal(S, S2) and torch.equal(Vh, Vh2)


def test_randomized_top_svd_of_zero_and_rank_deficient_batches():
    U, S, Vh, _ = top_svd(torch.zeros(2, 600, 100), 4)          # CholeskyQR fails -> Householder QR
    assert float(S.abs().max()) == 0.0 and bool(torch.isfinite(U).all() and torch.isfinite(Vh).all())
    g = torch.Generator().manual_seed(4)
    A = torch.randn(2, 600, 3, generator=g) @ torch.randn(2, 3, 100, generator=g)
    U, S, Vh, _ = top_svd(A, 8)
    assert float(((U * S.unsqueeze(-2)) @ Vh - A).norm() / A.norm()) < 1e-5
    assert torch.allclose(U.transpose(1, 2) @ U, torch.eye(8).expand(2, 8, 8), atol=1e-4)
