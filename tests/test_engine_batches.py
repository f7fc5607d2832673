"""The executor's batched paths give the per-key results bit for bit: adjacent keys merged as one
span, copies as one copy, row-chunked cosine/extract, batched NaN/inf checks that still name the key."""
import pytest
import torch
from safetensors.torch import load_file

from merger import engine, kernels, sinks
from merger.errors import AlloyError
from merger.filemerge import merge_to_file
from merger.methods import KeyContext, get_method
from merger.recipe import Recipe
from tests.fixtures import write_tiny

BLOCKS = ("0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1,0.15,0.25,0.35,0.45,0.55,0.65,0.75,0.85,0.95,0.05,"
          "0.5,0.5,0.6,0.7,0.8,0.9")
ELEMENTWISE = [("weight_sum", "normal"), ("add_difference", "normal"), ("triple_sum", "normal"),
               ("sum_twice", "normal"), ("add_difference", "trainDifference"), ("weight_sum", "self")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("batches")
    return [str(write_tiny(d / f"{n}.safetensors", "sd1", seed=s)) for n, s in (("a", 1), ("b", 2), ("c", 3))]


def _merge(files, tmp_path, name, **kw):
    a, b, c = files
    out = tmp_path / f"{name}.safetensors"
    merge_to_file(Recipe(a, b, c, **kw), str(out), device="cpu")
    return out


def _per_key(monkeypatch):
    """One key per read batch and a tiny output buffer: no spans, many buffer switches."""
    monkeypatch.setattr(engine, "BATCH_BYTES", 1)
    monkeypatch.setattr(sinks, "MIN_BUFFER", 1)


@pytest.mark.parametrize("mode,calc", ELEMENTWISE)
def test_spans_equal_per_key_merges_and_the_kernel(files, tmp_path, monkeypatch, mode, calc):
    kw = dict(mode=mode, calc=calc, alpha_blocks=BLOCKS, beta=0.3, dtype="fp16")
    batched = _merge(files, tmp_path, "batched", **kw)
    with monkeypatch.context() as m:
        _per_key(m)
        single = _merge(files, tmp_path, "single", **kw)
    assert batched.read_bytes() == single.read_bytes()
    A, B, C, R = (load_file(p) for p in (*files, str(batched)))
    fn = get_method(mode, calc).fn
    from merger.arch import get_arch
    from merger.weights import parse_block_list
    values = parse_block_list(BLOCKS, get_arch("sd1"))
    arch = get_arch("sd1")
    checked = 0
    for k in R:
        block = arch.block_of(k)
        if block is None or not A[k].dtype.is_floating_point or A[k].dim() == 0:
            continue
        al = values[arch.block_ids.index(block)]
        want = fn(A[k].float(), B[k].float(), C[k].float(), alpha=al, beta=0.3, gamma=0.0, ctx=KeyContext(key=k))
        assert torch.equal(R[k], want.half()), k
        checked += 1
    assert checked > 1000


def test_copies_and_fp32_output_equal_per_key(files, tmp_path, monkeypatch):
    kw = dict(alpha=0.4, dtype="fp32", exclude="IN01 IN02 OUT05 cond_stage_model")
    batched = _merge(files, tmp_path, "batched", **kw)
    with monkeypatch.context() as m:
        _per_key(m)
        single = _merge(files, tmp_path, "single", **kw)
    assert batched.read_bytes() == single.read_bytes()
    with monkeypatch.context() as m:           # batches whose targets straddle the output buffers
        m.setattr(engine, "BATCH_BYTES", 3000)
        m.setattr(sinks, "MIN_BUFFER", 6000)
        small = _merge(files, tmp_path, "small", **kw)
    assert small.read_bytes() == single.read_bytes()


@pytest.mark.parametrize("calc,mode,kw", [("cosineA", "weight_sum", dict(alpha=0.2)),
                                          ("cosineB", "weight_sum", dict(alpha=-0.1)),
                                          ("extract", "add_difference", dict(alpha=0.3, beta=0.6, gamma=1.5))])
def test_row_chunked_methods_equal_the_kernel(files, tmp_path, monkeypatch, calc, mode, kw):
    monkeypatch.setattr(kernels, "CHUNK", 64)          # several row chunks per key
    out = _merge(files, tmp_path, calc, mode=mode, calc=calc, **kw)
    A, B, C, R = (load_file(p) for p in (*files, str(out)))
    m = get_method(mode, calc)
    stats = None
    if m.prepass is not None:
        keys = [k for k in A if "model" in k and "first_stage_model" not in k]     # as the engine picks them
        stats = m.finalize([m.prepass(A[k].float(), B[k].float()) for k in keys])
    merged = 0
    for k in ("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", "model.diffusion_model.out.2.bias",
              "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
              "model.diffusion_model.input_blocks.1.1.proj_in.weight"):
        want = m.fn(A[k].float(), B[k].float(), C[k].float(), alpha=kw["alpha"], beta=kw.get("beta", 0.25),
                    gamma=kw.get("gamma", 0.3), ctx=KeyContext(key=k, stats=stats))
        assert torch.equal(R[k], want.half()), k
        merged += not torch.equal(R[k], A[k])
    assert merged >= 3


@pytest.mark.parametrize("value,what", [(float("nan"), "NaN or infinite"), (1e5, "too large")])
def test_bad_value_inside_a_span_names_its_key(tmp_path, value, what):
    bad_key = "model.diffusion_model.input_blocks.4.1.norm.bias"

    def edit(sd):
        sd[bad_key][1] = value if value != 1e5 else 6e4

    a = write_tiny(tmp_path / "a.safetensors", "sd1", seed=1)
    b = write_tiny(tmp_path / "b.safetensors", "sd1", seed=2, edit=edit, dtype=torch.float32)
    out = tmp_path / "o.safetensors"
    with pytest.raises(AlloyError, match=f"{bad_key.replace('.', '[.]')} [(]merging model A .*[)] contains .*{what}"):
        merge_to_file(Recipe(str(a), str(b), alpha=0.9 if value != 1e5 else 1.7, mode="weight_sum"),
                      str(out), device="cpu")
    assert not out.exists()


@pytest.mark.parametrize("defer", [True, False])
def test_finite_check_names_the_first_bad_key_of_a_span(defer):
    chk = kernels.FiniteCheck(defer=defer)
    t = torch.zeros(10)
    chk.add(["k0", "k1", "k2"], [0, 4, 7], t, torch.float16)
    chk.flush()
    t[8] = float("inf")
    with pytest.raises(AlloyError, match="k2 contains NaN or infinite"):
        chk.add(["k0", "k1", "k2"], [0, 4, 7], t, torch.float16)
        chk.add(["k9"], [0], torch.tensor([float("nan")]), torch.float16)
        chk.flush()
    assert not defer or len(chk) == 0
    chk = kernels.FiniteCheck(defer=defer)
    t = torch.zeros(10)
    t[2] = 7e4                                    # a chunk that starts inside key k0 (start −3)
    with pytest.raises(AlloyError, match="k0 contains values too large"):
        chk.add(["k0", "k1"], [-3, 5], t, torch.float16)
        chk.flush()
    chk.add(["fine"], [0], torch.tensor([7e4]), torch.float32)
    chk.flush()


def test_a_read_batch_fits_one_file_sink_buffer():
    assert engine.BATCH_BYTES <= sinks.MIN_BUFFER // 2   # FileSink's rule for targets asked for at once


def test_file_sink_that_could_not_begin_reports_the_real_error(tmp_path):
    """An existing output without overwrite fails in begin(); abort() must not hide that sentence."""
    from merger.io import open_source
    from merger.plan import build_plan
    a, b = write_tiny(tmp_path / "a.safetensors", "sd1", seed=1), write_tiny(tmp_path / "b.safetensors", "sd1", seed=2)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    sources = {"a": open_source(str(a), "model A"), "b": open_source(str(b), "model B")}
    try:
        plan = build_plan(Recipe(model_a=str(a), model_b=str(b), alpha=0.3), sources)
        with pytest.raises(AlloyError, match="exists"):
            engine.execute(plan, sources, sinks.FileSink(str(out)))
    finally:
        for s in sources.values():
            s.close()
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize("defer", [True, False])
def test_finite_check_of_a_column_major_chunk(defer):
    """Short rows run through column-major chunks (a transposed view): the check reads them as the
    dense block they are, and still finds an overflow or a NaN wherever it is."""
    for bad, match in ((7e4, "too large"), (float("nan"), "NaN or infinite")):
        t = torch.randn(3, 50).t()                   # (50, 3), strides (1, 50)
        assert not t.is_contiguous() and kernels._dense(t).is_contiguous()
        chk = kernels.FiniteCheck(defer=defer)
        chk.add(["fine"], [0], t, torch.float16)
        chk.flush()
        t[37, 2] = bad
        with pytest.raises(AlloyError, match=f"k .*{match}"):
            chk.add(["k"], [0], t, torch.float16)
            chk.flush()
    odd = torch.randn(4, 6)[:, ::2]                  # not a permutation of a dense block: left as it is
    assert kernels._dense(odd) is odd


def test_kernel_temporaries_come_from_the_scratch_in_the_same_memory_order():
    from merger.methods.base import KeyContext, temp
    scratch = kernels.Scratch(torch.float32, "cpu", n=64)
    col = torch.empty(3, 40).t()
    ctx = KeyContext(key="k", scratch=scratch)
    t1 = temp(ctx, "x.one", col)
    assert t1.shape == col.shape and t1.stride() == col.stride()
    assert t1.data_ptr() == scratch.get("x.one", 120).data_ptr()
    assert temp(ctx, "x.one", col).data_ptr() == t1.data_ptr()              # reused
    assert temp(ctx, "x.two", col).data_ptr() != t1.data_ptr()
    half = temp(ctx, "x.one", col.half())                                   # another dtype: a new tensor
    assert half.dtype == torch.float16 and half.stride() == col.stride()
    assert temp(KeyContext(key="k"), "x.one", col).stride() == col.stride()  # no scratch
