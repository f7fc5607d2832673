"""Elemental rules (spec §6): parsing, NOT, ranges, last match wins, SDXL's own block names; fuzzed."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merger.arch import FLUX, SD1, SDXL
from merger.elemental import parse_elemental
from merger.errors import AlloyError

P = "model.diffusion_model."
K_ATTN2_K = P + "output_blocks.6.1.transformer_blocks.0.attn2.to_k.weight"
K_ATTN1_Q = P + "output_blocks.6.1.transformer_blocks.0.attn1.to_q.weight"
K_RES = P + "output_blocks.6.0.in_layers.0.weight"


def test_last_match_wins_and_more_specific_element():
    e = parse_elemental("OUT06:attn:0.5,OUT06:attn2.to_k:0.2", SD1)
    assert e.apply(K_ATTN2_K, "OUT06", 0.9) == 0.2
    assert e.apply(K_ATTN1_Q, "OUT06", 0.9) == 0.5
    assert e.apply(K_RES, "OUT06", 0.9) == 0.9
    assert e.apply(K_ATTN1_Q, "OUT05", 0.9) == 0.9
    e = parse_elemental("OUT06:attn2.to_k:0.2\nOUT06:attn:0.5", SD1)     # order reversed: broad rule wins
    assert e.apply(K_ATTN2_K, "OUT06", 0.9) == 0.5


def test_block_lists_ranges_and_whole_block():
    e = parse_elemental("OUT03 OUT04 OUT05:attn2 attn1.to_out:0.5", SD1)
    key = P + "output_blocks.4.1.transformer_blocks.0.attn1.to_out.0.weight"
    assert e.apply(key, "OUT04", 1.0) == 0.5 and e.apply(key, "OUT06", 1.0) == 1.0
    e = parse_elemental("IN08-IN04::0.3", SD1)                           # reversed range
    assert [e.apply("x.weight", b, 1.0) for b in ("IN03", "IN04", "IN06", "IN08", "IN09")] == [1, .3, .3, .3, 1]
    e = parse_elemental("OUT05::1", SD1)
    assert e.apply(K_RES, "OUT05", 0.0) == 1.0
    e = parse_elemental(":attn:0.7", SD1)                                 # empty blocks = all
    assert e.apply(K_ATTN1_Q, "BASE", 0.1) == 0.7 and e.apply(K_RES, "OUT06", 0.1) == 0.1


def test_not_on_blocks_and_elements():
    e = parse_elemental("NOT OUT04:attn:1", SD1)
    assert e.apply(K_ATTN1_Q, "OUT06", 0.0) == 1.0 and e.apply(K_ATTN1_Q, "OUT04", 0.0) == 0.0
    e = parse_elemental("OUT05:NOT attn proj:0.2", SD1)
    assert e.apply(K_RES, "OUT05", 0.9) == 0.2
    assert e.apply(K_ATTN1_Q, "OUT05", 0.9) == 0.9
    assert e.apply(P + "output_blocks.5.1.proj_in.weight", "OUT05", 0.9) == 0.9
    e = parse_elemental("NOT:NOT:0.4", SD1)                               # lone NOT = everything
    assert e.apply(K_RES, "IN00", 0.0) == 0.4


def test_sdxl_uses_its_own_20_block_names():
    e = parse_elemental("M00::0.1,OUT00::0.2,OUT08::0.3", SDXL)
    assert e.apply("k.weight", "M00", 1.0) == 0.1
    assert e.apply("k.weight", "OUT00", 1.0) == 0.2
    assert e.apply("k.weight", "OUT08", 1.0) == 0.3
    assert e.apply("k.weight", "IN08", 1.0) == 1.0
    with pytest.raises(AlloyError, match="SDXL has no block 'IN09'"):
        parse_elemental("IN09::0.5", SDXL)


def test_flux_block_names():
    e = parse_elemental("D00-D02 S37:img_attn:0.25", FLUX)
    assert e.apply("double_blocks.1.img_attn.qkv.weight", "D01", 1.0) == 0.25
    assert e.apply("double_blocks.3.img_attn.qkv.weight", "D03", 1.0) == 1.0


def test_entries_without_two_colons():
    e = parse_elemental("OUT05:0.5, IN01:a:b:0.2 , OUT06::0.1,,", SD1)
    assert e.ignored == ("OUT05:0.5", "IN01:a:b:0.2") and len(e.rules) == 1
    with pytest.raises(AlloyError, match="Blocks:Elements:Ratio"):
        parse_elemental("OUT05:0.5", SD1, strict=True)
    assert not parse_elemental("", SD1) and not parse_elemental(None, SD1)


@pytest.mark.parametrize("text, match", [
    ("OUT05::R", "random ratios"), ("OUT05::U(0.1,0.5)", "random ratios"), ("OUT05::x", "random ratios"),
    ("OUT05::abc", "not a number"), ("OUT05::inf", "not a finite"), ("OUT05::", "not a number"),
    ("OUT99::0.5", "no block 'OUT99'"), ("IN01-:a:0.5", "not a block ID or a range"),
])
def test_bad_rules(text, match):
    with pytest.raises(AlloyError, match=match):
        parse_elemental(text, SD1)


# ---- fuzzing ---------------------------------------------------------------------------------------

_token = st.sampled_from(list(SD1.block_ids) + ["NOT", "IN04-IN08", "OUT11-M00", "attn", "", ":", "R", "0.5",
                                                "-", "1e9", "nan", "IN99", " ", ",", "\n", "NOT NOT"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_token, max_size=12).map("".join), st.booleans())
def test_parser_only_raises_alloy_error(text, strict):
    try:
        e = parse_elemental(text, SD1, strict=strict)
    except AlloyError:
        return
    for rule in e.rules:
        assert rule.blocks <= set(SD1.block_ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sets(st.sampled_from(SD1.block_ids), max_size=4),
                          st.sampled_from(["", "attn", "attn2", "NOT attn", "in_layers"]),
                          st.floats(-2, 3, allow_nan=False)), max_size=6),
       st.sampled_from(SD1.block_ids), st.sampled_from([K_ATTN2_K, K_ATTN1_Q, K_RES]))
def test_last_matching_entry_wins(entries, block, key):
    text = ",".join(f"{' '.join(sorted(b))}:{el}:{r!r}" for b, el, r in entries)
    e = parse_elemental(text, SD1)
    expected = 0.123
    for blocks, el, r in entries:
        in_block = not blocks or block in blocks
        words = el.split()
        neg = bool(words) and words[0] == "NOT"
        words = words[1:] if neg else words
        in_el = not words or (any(w in key for w in words) != neg)
        if in_block and in_el:
            expected = r
    assert e.apply(key, block, 0.123) == expected
