"""smoothAdd's filters as torch ops (merger.methods.filters) against SciPy, which stays the
reference here only: the median exactly (bit for bit), the Gaussian within float32 rounding; the
comparator programs on plain numbers; a smoothAdd file merge against the kernel per key."""
import random

import numpy as np
import pytest
import scipy.ndimage
import torch
from safetensors.torch import load_file

from merger.errors import AlloyError
from merger.filemerge import merge_to_file
from merger.methods import KeyContext, get_method
from merger.methods import filters, sortnet
from merger.recipe import Recipe
from tests.fixtures import write_tiny

SHAPES = [(1,), (2,), (3,), (4,), (23,), (1, 1), (1, 7), (2, 2), (2, 9), (3, 3), (9, 13), (13, 2),
          (6, 5, 3, 3), (7, 4, 1, 1), (4, 6, 2, 2), (5, 2, 3, 3), (2, 3, 3, 3), (3, 3, 3, 3), (1, 4, 3, 3),
          (4, 1, 3, 1), (5, 4, 3), (2, 2, 2), (3, 1, 4, 1, 2)]


def _data(shape, kind, seed):
    g = np.random.default_rng(seed)
    if kind == "ties":                      # few distinct values: many equal elements per window
        return g.integers(-2, 3, size=shape).astype(np.float32)
    if kind == "signed_zeros":
        return np.array([-0.0, 0.0, 1.5], dtype=np.float32)[g.integers(0, 3, size=shape)]
    return g.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["normal", "ties", "signed_zeros"])
def test_median_equals_scipy_bit_for_bit(shape, kind):
    x = _data(shape, kind, hash((shape, kind)) % 1000)
    want = scipy.ndimage.median_filter(x, size=3, mode="reflect")
    got = filters.median3(torch.from_numpy(x))
    assert got.dtype == torch.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got.numpy(), want)
    got64 = filters.median3(torch.from_numpy(x.astype(np.float64)))
    np.testing.assert_array_equal(got64.numpy(), want.astype(np.float64))


def test_median_chunks_and_layouts_do_not_change_the_result(monkeypatch):
    x = _data((37, 29, 3, 3), "normal", 5)
    want = scipy.ndimage.median_filter(x, size=3, mode="reflect")
    for chunk in (1, 200, 1 << 20):              # one row per chunk … everything at once
        monkeypatch.setitem(filters.CHUNK, "cpu", chunk)
        np.testing.assert_array_equal(filters.median3(torch.from_numpy(x)).numpy(), want)
    # the GPU's configuration (whole-chunk operations, one worker) on the CPU
    monkeypatch.setitem(filters.CHUNK, "cpu", filters.CHUNK["cuda"])
    monkeypatch.setitem(filters.SEGMENT, "cpu", filters.SEGMENT["cuda"])
    monkeypatch.setattr(filters, "THREADS", 1)
    for shape in ((37, 29, 3, 3), (300, 7), (5000,)):
        y = _data(shape, "normal", 6)
        np.testing.assert_array_equal(filters.median3(torch.from_numpy(y)).numpy(),
                                      scipy.ndimage.median_filter(y, size=3, mode="reflect"))
    t = torch.from_numpy(x).permute(2, 0, 3, 1)  # a non-contiguous input
    np.testing.assert_array_equal(filters.median3(t).numpy(), want.transpose(2, 0, 3, 1))


def test_median_of_scalar_and_empty():
    assert filters.median3(torch.tensor(2.5)).item() == 2.5
    assert filters.median3(torch.empty(0, 3)).shape == (0, 3)


@pytest.mark.parametrize("shape", [(1,), (2,), (3,), (8,), (9,), (10,), (23,), (9, 13), (40, 33), (6, 5, 3, 3),
                                   (12, 11, 3, 3), (7, 4, 1, 1), (2, 20, 3), (3, 12, 2), (11, 10, 9)], ids=str)
def test_gaussian_matches_scipy_within_float32_rounding(shape):
    x = _data(shape, "normal", 7)
    want = scipy.ndimage.gaussian_filter(x.astype(np.float64), sigma=1, mode="reflect", truncate=4.0)
    got = filters.gaussian(torch.from_numpy(x))
    assert got.dtype == torch.float32 and got.shape == x.shape
    scale = np.abs(x).max()
    assert np.abs(got.numpy() - want).max() <= 16 * np.finfo(np.float32).eps * scale
    got64 = filters.gaussian(torch.from_numpy(x.astype(np.float64)))
    assert np.abs(got64.numpy() - want).max() <= 1e-12 * scale
    scipy32 = scipy.ndimage.gaussian_filter(x, sigma=1, mode="reflect", truncate=4.0)   # SciPy's own float32 result
    assert np.abs(got.numpy() - scipy32).max() <= 16 * np.finfo(np.float32).eps * scale


def _simulate(prog, lists):
    temps, outs = {}, {}

    def get(ref):
        return lists[ref[1]][ref[2]] if ref[0] == "in" else (temps if ref[0] == "t" else outs)[ref[1]]

    for is_max, dst, a, b in prog.ops:
        (temps if dst[0] == "t" else outs)[dst[1]] = (max if is_max else min)(get(a), get(b))
    for dst, src in prog.copies:
        outs[dst[1]] = get(src)
    return [outs[i] for i in range(len(outs))]


@pytest.mark.parametrize("m", [1, 3, 9, 27])
@pytest.mark.parametrize("wtype", sorted(sortnet.WINDOWS))
def test_level_programs_sort_and_select(m, wtype):
    window = sortnet.WINDOWS[wtype]
    rng = random.Random(m * 7 + len(wtype))
    for needed in (tuple(range(3 * m)), ((3 * m - 1) // 2,)):
        prog = sortnet.level_program(m, window, needed)
        for _ in range(60):
            lists = {lab: sorted(rng.choice([rng.random(), float(rng.randint(0, 3))]) for _ in range(m))
                     for lab in (-1, 0, 1)}
            merged = sorted(v for lab in window for v in lists[lab])
            assert _simulate(prog, lists) == [merged[r] for r in needed]


def test_smooth_add_kernel_on_the_device_of_its_inputs():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(6, 5, 3, 3, generator=g).to(dev) for _ in range(3))
    got = get_method("add_difference", "smoothAdd").fn(a, b, c, alpha=0.7, beta=0, gamma=0, ctx=KeyContext())
    assert got.device == a.device
    d = scipy.ndimage.median_filter((b - c).cpu().numpy(), size=3, mode="reflect")
    d = scipy.ndimage.gaussian_filter(d.astype(np.float64), sigma=1, mode="reflect")
    np.testing.assert_allclose(got.cpu().double().numpy(), a.cpu().double().numpy() + 0.7 * d, rtol=1e-5, atol=2e-6)


def test_smooth_add_file_merge_equals_kernel_per_key_and_refuses_nan(tmp_path):
    a, b, c = (write_tiny(tmp_path / f"{n}.safetensors", seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    r = Recipe(str(a), str(b), str(c), mode="add_difference", calc="smoothAdd", alpha=0.8)
    out = tmp_path / "o.safetensors"
    rep = merge_to_file(r, str(out), device="cpu")
    assert rep.keys_merged > 1000
    A, B, C, R = (load_file(str(p)) for p in (a, b, c, out))
    fn = get_method("add_difference", "smoothAdd").fn
    for k in ("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", "model.diffusion_model.out.2.bias",
              "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"):
        want = fn(A[k].float(), B[k].float(), C[k].float(), alpha=0.8, beta=0, gamma=0, ctx=KeyContext(key=k))
        assert torch.equal(R[k], want.half()), k

    def nan(sd):
        sd["model.diffusion_model.output_blocks.3.0.skip_connection.weight"].fill_(float("nan"))

    bad = write_tiny(tmp_path / "bad.safetensors", seed=2, edit=nan)
    out2 = tmp_path / "o2.safetensors"
    with pytest.raises(AlloyError, match="skip_connection"):
        merge_to_file(r.replace(model_b=str(bad)), str(out2), device="cpu")
    assert not out2.exists()


def test_smooth_add_in_row_chunks_with_a_halo_equals_the_whole_tensor(monkeypatch):
    from merger import kernels
    from merger.plan import KeyPlan
    m = get_method("add_difference", "smoothAdd")
    g = torch.Generator().manual_seed(4)
    for shape, chunk in (((23, 7, 3, 3), 63), ((40, 12), 24), ((57,), 1), ((9, 5), 5), ((11, 2, 3), 1)):
        monkeypatch.setattr(kernels, "HALO_CHUNK", chunk)   # 1 … 7 rows per chunk: every halo case
        t = {s: torch.randn(shape, generator=g).half() for s in "abc"}
        kp = KeyPlan("model.k", "merge", shape, torch.float32, alpha=0.8)
        dst = torch.empty(shape)
        check = kernels.FiniteCheck()
        kernels.merge_rows(m, kp, t, dst, gamma=0.0, stats=None, scratch=kernels.Scratch(torch.float32, "cpu"),
                           check=check)
        check.flush()
        want = m.fn(*(t[s].float() for s in "abc"), alpha=0.8, beta=0, gamma=0, ctx=KeyContext(key="model.k"))
        torch.testing.assert_close(dst, want, rtol=1e-6, atol=1e-6)
