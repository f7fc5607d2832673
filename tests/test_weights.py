"""Block lists, include/exclude selections and the per-key ratio resolver; fuzzed parsers."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merger.arch import FLUX, SD1, SD2, SDXL
from merger.errors import AlloyError
from merger.presets import BUILTIN, Presets
from merger.recipe import Recipe
from merger.weights import RatioResolver, format_block_list, parse_block_list, parse_selection

P = "model.diffusion_model."
PRESETS = Presets()
ARCHS = [SD1, SD2, SDXL, FLUX]


# ---- parse_block_list --------------------------------------------------------------------------------

def test_lists_of_each_family_and_blank():
    assert parse_block_list(None, SD1) is None and parse_block_list("  ", SDXL) is None
    assert parse_block_list(",".join(["0.5"] * 26), SD1) == [0.5] * 26
    assert parse_block_list(" 1, 2 ,\n3" + ",0" * 17, SDXL) == [1, 2, 3] + [0] * 17
    assert parse_block_list(",".join(["1"] * 61), FLUX) == [1.0] * 61
    assert parse_block_list("1 2 3" + " 0" * 23, SD2) == [1, 2, 3] + [0] * 23


def test_sdxl_accepts_26_values_converted():
    values = list(range(26))
    assert parse_block_list(",".join(map(str, values)), SDXL) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                  13, 14, 15, 16, 17, 18, 19, 20, 21, 22]


def test_presets_in_block_lists():
    assert parse_block_list("GRAD_V", SD1, PRESETS) == list(BUILTIN["GRAD_V"])
    assert len(parse_block_list("SMOOTHSTEP", SDXL)) == 20
    with pytest.raises(AlloyError, match="Unknown block-weight preset 'SMOOTHSTEP\\*9'"):
        parse_block_list("SMOOTHSTEP*9", SD1)
    with pytest.raises(AlloyError, match="cannot be used on Flux"):
        parse_block_list("GRAD_V", FLUX)


@pytest.mark.parametrize("arch, n, message", [
    (SDXL, 25, "alpha block list has 25 values; SDXL needs 20 \\(or 26\\)"),
    (SD1, 20, "alpha block list has 20 values; SD1.x needs 26"),
    (FLUX, 26, "alpha block list has 26 values; Flux needs 61"),
    (SD1, 1, "has 1 values"),
])
def test_wrong_lengths(arch, n, message):
    with pytest.raises(AlloyError, match=message):
        parse_block_list(",".join(["0.1"] * n), arch)


def test_bad_values_name_the_position():
    with pytest.raises(AlloyError, match="beta block list value 3 \\('x'\\) is not a number"):
        parse_block_list("0,1,x" + ",0" * 23, SD1, what="beta")
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(AlloyError, match="value 2 .*finite"):
            parse_block_list("0," + bad + ",0" * 24, SD1)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ARCHS), st.data())
def test_round_trip(arch, data):
    n = len(arch.block_ids)
    values = data.draw(st.lists(st.floats(-3, 3, allow_nan=False), min_size=n, max_size=n))
    assert parse_block_list(format_block_list(values), arch) == values


_junk = st.text(alphabet=st.sampled_from(list("0123456789.,- eE+\nnaifRUX_GRAD_V")), max_size=80)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ARCHS), st.one_of(_junk, st.sampled_from(list(BUILTIN)), st.text(max_size=30)))
def test_parse_block_list_only_raises_alloy_error(arch, text):
    try:
        values = parse_block_list(text, arch, PRESETS)
    except AlloyError:
        return
    assert values is None or (len(values) == len(arch.block_ids) and all(math.isfinite(v) for v in values))


# ---- selections ---------------------------------------------------------------------------------------

def test_selection_tokens():
    s = parse_selection("IN04-IN06, OUT11  attn VAE adjust", SD1)
    assert s.blocks == {"IN04", "IN05", "IN06", "OUT11"} and s.substrings == ("attn",) and s.vae and s.adjust
    assert s.matches("anything", "IN05")
    assert s.matches(P + "output_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", "OUT01")
    assert s.matches("first_stage_model.decoder.conv_in.weight", "BASE")
    assert s.matches(P + "out.2.bias", "OUT11") and s.matches(P + "input_blocks.0.0.weight", "IN00")
    assert not s.matches(P + "input_blocks.0.0.bias.x", "IN00")
    assert not s.matches("cond_stage_model.transformer.text_model.final_layer_norm.weight", "BASE")
    assert parse_selection("OUT08-OUT06", SDXL).blocks == {"OUT06", "OUT07", "OUT08"}
    assert parse_selection("D00-D02 OUT", FLUX).blocks == {"D00", "D01", "D02", "OUT"}
    assert not parse_selection("", SD1) and not parse_selection(None, SD1)


def test_selection_refuses_blocks_the_family_lacks():
    with pytest.raises(AlloyError, match="SDXL has no block 'IN09'"):
        parse_selection("IN09", SDXL)
    with pytest.raises(AlloyError, match="SDXL has no block 'OUT11'"):
        parse_selection("OUT00-OUT11", SDXL)
    with pytest.raises(AlloyError, match="not a block ID"):
        parse_selection("IN01-IN02-IN03", SD1)


_sel_tok = st.sampled_from(list(SDXL.block_ids) + ["IN04-IN08", "OUT08-IN00", "VAE", "adjust", "attn", "IN11",
                                                   "-", "IN00-", "a-b", "NOT", "OUT09-OUT01", "in_layers"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_sel_tok, max_size=8), st.sampled_from([" ", ",", ", ", "\n"]))
def test_parse_selection_only_raises_alloy_error(tokens, sep):
    try:
        s = parse_selection(sep.join(tokens), SDXL)
    except AlloyError:
        return
    assert s.blocks <= set(SDXL.block_ids)
    for tok in tokens:
        if tok in SDXL.block_ids:
            assert tok in s.blocks


# ---- RatioResolver --------------------------------------------------------------------------------------

def _recipe(**kw) -> Recipe:
    return Recipe("a.safetensors", "b.safetensors", **kw)


def test_plain_ratios_and_unmerged_keys():
    r = RatioResolver(_recipe(alpha=0.3, beta=0.7), SD1)
    assert r.ratios(P + "input_blocks.1.0.in_layers.0.weight", "IN01") == (0.3, 0.7)
    assert r.ratios("betas", None) is None


def test_block_lists_override_every_block_including_base():
    alpha = [0.9] + [i / 100 for i in range(1, 26)]
    r = RatioResolver(_recipe(alpha=0.3, beta=0.2, alpha_blocks=format_block_list(alpha)), SD1)
    assert r.ratios("cond_stage_model.transformer.text_model.final_layer_norm.weight", "BASE") == (0.9, 0.2)
    assert r.ratios(P + "input_blocks.0.0.weight", "IN00") == (0.01, 0.2)
    assert r.ratios(P + "time_embed.0.weight", "OUT11") == (0.25, 0.2)
    assert r.ratios_for_block("M00") == (0.13, 0.2)
    beta = ",".join(["0.6"] * 26)
    r = RatioResolver(_recipe(alpha=0.3, beta_blocks=beta), SDXL)
    assert r.ratios("k.weight", "OUT08") == (0.3, 0.6)


def test_elemental_overrides_alpha_only_and_after_lists():
    r = RatioResolver(_recipe(alpha_blocks="ALL_B", beta=0.4, elemental="OUT05:attn:0.25"), SD1)
    assert r.ratios(P + "output_blocks.5.1.transformer_blocks.0.attn1.to_q.weight", "OUT05") == (0.25, 0.4)
    assert r.ratios(P + "output_blocks.5.0.in_layers.0.weight", "OUT05") == (1.0, 0.4)


def test_include_and_exclude():
    ex = RatioResolver(_recipe(alpha=0.5, exclude="IN00-IN02 VAE attn2"), SD1)
    assert ex.ratios(P + "input_blocks.1.0.in_layers.0.weight", "IN01") is None
    assert ex.ratios("first_stage_model.decoder.conv_in.weight", "BASE") is None
    assert ex.ratios(P + "output_blocks.3.1.transformer_blocks.0.attn2.to_v.weight", "OUT03") is None
    assert ex.ratios(P + "output_blocks.3.1.transformer_blocks.0.attn1.to_v.weight", "OUT03") == (0.5, 0.25)
    inc = RatioResolver(_recipe(alpha=0.5, include="ADJUST OUT08"), SDXL)
    assert inc.ratios(P + "out.2.bias", "OUT08") == (0.5, 0.25)
    assert inc.ratios(P + "input_blocks.0.0.weight", "IN00") == (0.5, 0.25)
    assert inc.ratios(P + "input_blocks.1.0.in_layers.0.weight", "IN01") is None
    assert inc.ratios(P + "output_blocks.8.0.in_layers.0.weight", "OUT08") == (0.5, 0.25)
    desc = ex.describe()
    assert desc["exclude"] == "IN00 IN01 IN02 VAE attn2" and desc["alpha_blocks"] is None


def test_describe_shows_excluded_blocks_as_zero():
    r = RatioResolver(_recipe(alpha_blocks="FLAT_75", exclude="M00"), SD1)
    d = r.describe()
    assert d["alpha_blocks"][13] == 0.0 and d["alpha_blocks"][12] == 0.75 and d["arch"] == "sd1"


@pytest.mark.parametrize("kw, match", [
    (dict(alpha_blocks="0.5,0.5"), "alpha block list has 2 values"),
    (dict(beta_blocks="NOPE"), "Unknown block-weight preset"),
    (dict(elemental="IN99::0.5"), "no block 'IN99'"),
    (dict(include="IN01", exclude="IN02"), "either include or exclude"),
    (dict(exclude="IN12"), "no block 'IN12'"),
    (dict(adjust="1,2,3"), "exactly 8 numbers"),
])
def test_resolver_validates_everything_at_construction(kw, match):
    with pytest.raises(AlloyError, match=match):
        RatioResolver(_recipe(**kw), SD1)


def test_adjust_refused_for_flux_at_construction():
    with pytest.raises(AlloyError, match="Adjust is not available for Flux"):
        RatioResolver(_recipe(adjust="1,0,0,0,0,0,0,0"), FLUX)
    assert RatioResolver(_recipe(adjust="0,0,0,0,0,0,0,0"), FLUX).adjust is None
    assert RatioResolver(_recipe(adjust="1,0,0,0,0,0,0,0.5"), SDXL).adjust == (1, 0, 0, 0, 0, 0, 0, 0.5)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([SD1, SDXL, FLUX]), st.data())
def test_resolver_agrees_with_the_lists(arch, data):
    n = len(arch.block_ids)
    alpha = data.draw(st.lists(st.floats(-1, 2, allow_nan=False), min_size=n, max_size=n))
    block = data.draw(st.sampled_from(arch.block_ids))
    r = RatioResolver(_recipe(alpha_blocks=format_block_list(alpha), beta=0.1), arch)
    assert r.ratios("some.weight", block) == (alpha[arch.block_ids.index(block)], 0.1)
