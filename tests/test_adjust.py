"""Adjust (spec §8) against an independent float64 formula."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from merger.adjust import apply_adjust, parse_adjust, validate_adjust
from merger.arch import FLUX, SD1, SD2, SDXL
from merger.errors import AlloyError

P = "model.diffusion_model."

# colour vectors per family, (BRI, COL1, COL2, COL3) → 3 latent channels, written out from the spec table
SD_COLOURS = [[-1, 1 / 3, 2 / 3], [1, 1, 0], [0, -1, -1], [1, 0, 1]]
XL_COLOURS = [[0, 0, 1], [1, 0, 0], [-1, -1, 0], [-1, 1, 0]]


def reference(key: str, t: torch.Tensor, v: list[float], colours) -> torch.Tensor:
    """Spec §8 in float64, written independently of merger.adjust."""
    x = t.double()
    IN, OUT, OUT2, CONT, BRI, C1, C2, C3 = v
    if key.endswith("input_blocks.0.0.weight"):
        return x * (1 - IN / 100)
    if key.endswith("input_blocks.0.0.bias"):
        return x * (1 + IN / 50)
    if key.endswith("out.0.weight"):
        return x * (1 - OUT / 100)
    if key.endswith("out.0.bias"):
        return x * (1 + OUT / 50)
    if key.endswith("out.2.weight"):
        return x * (1 - OUT2 / 100)
    if key.endswith("out.2.bias"):
        col = torch.tensor(colours, dtype=torch.float64).T @ torch.tensor([BRI, C1, C2, C3], dtype=torch.float64)
        return x + torch.cat([torch.tensor([CONT], dtype=torch.float64), col]) / 50
    return x


KEYS = {
    P + "input_blocks.0.0.weight": (8, 4, 3, 3), P + "input_blocks.0.0.bias": (8,),
    P + "out.0.weight": (8,), P + "out.0.bias": (8,), P + "out.2.weight": (4, 8, 3, 3), P + "out.2.bias": (4,),
}


def test_parse_adjust():
    assert parse_adjust("") is None and parse_adjust(None) is None and parse_adjust(" 0,0,0,0,0,0,0,0 ") is None
    assert parse_adjust("1, -2, 3, 4.5, 0, 0, 0, 1e-1") == (1, -2, 3, 4.5, 0, 0, 0, 0.1)
    with pytest.raises(AlloyError, match="exactly 8 numbers.*got 7"):
        parse_adjust("1,2,3,4,5,6,7")
    with pytest.raises(AlloyError, match="COL2 \\('x'\\) is not a number"):
        parse_adjust("0,0,0,0,0,0,x,0")
    with pytest.raises(AlloyError, match="BRI .*finite"):
        parse_adjust("0,0,0,0,nan,0,0,0")


def test_flux_is_refused():
    with pytest.raises(AlloyError, match="Adjust is not available for Flux"):
        validate_adjust((1, 0, 0, 0, 0, 0, 0, 0), FLUX)
    validate_adjust(None, FLUX)
    validate_adjust((1, 0, 0, 0, 0, 0, 0, 0), SDXL)


@pytest.mark.parametrize("arch, colours", [(SD1, SD_COLOURS), (SD2, SD_COLOURS), (SDXL, XL_COLOURS)])
def test_golden_against_float64_formula(arch, colours):
    values = [2.0, -3.0, 1.5, 4.0, -5.0, 2.5, 3.0, -1.0]
    g = torch.Generator().manual_seed(0)
    for key, shape in KEYS.items():
        t = torch.randn(shape, generator=g)
        before = t.clone()
        out = apply_adjust(key, t, tuple(values), arch)
        assert out is not t and out.dtype == torch.float32
        assert torch.equal(t, before)                                  # input untouched
        torch.testing.assert_close(out.double(), reference(key, t, values, colours), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(out, t)


def test_colour_only_moves_out2_bias_by_the_table():
    # BRI=+5 on SD: c = 0.02·5·(−1, 1/3, 2/3) = (−0.1, 0.0333, 0.0667); SDXL: (0, 0, 0.1)
    z = torch.zeros(4)
    sd = apply_adjust(P + "out.2.bias", z, (0, 0, 0, 0, 5, 0, 0, 0), SD1)
    torch.testing.assert_close(sd, torch.tensor([0.0, -0.1, 0.1 / 3, 0.2 / 3]))
    xl = apply_adjust("out.2.bias", z, (0, 0, 0, 1, 5, 0, 0, 0), SDXL)       # bare key, CONT=1
    torch.testing.assert_close(xl, torch.tensor([0.02, 0.0, 0.0, 0.1]))


def test_other_keys_and_off_are_untouched():
    t = torch.ones(3)
    for key in (P + "out.1.weight", P + "input_blocks.0.1.weight", "first_stage_model.decoder.conv_in.bias"):
        assert apply_adjust(key, t, (1, 1, 1, 1, 1, 1, 1, 1), SD1) is t
    assert apply_adjust(P + "out.0.weight", t, None, SD1) is t


def test_out2_bias_must_have_4_channels():
    with pytest.raises(AlloyError, match="out.2.bias.*4 channels"):
        apply_adjust(P + "out.2.bias", torch.zeros(8), (0, 0, 0, 1, 0, 0, 0, 0), SD1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=8, max_size=8), st.sampled_from(sorted(KEYS)),
       st.sampled_from([(SD1, SD_COLOURS), (SDXL, XL_COLOURS)]))
def test_fuzzed_against_reference(values, key, arch_colours):
    arch, colours = arch_colours
    t = torch.linspace(-1, 1, int(torch.tensor(KEYS[key]).prod())).reshape(KEYS[key])
    out = apply_adjust(key, t, tuple(values), arch)
    torch.testing.assert_close(out.double(), reference(key, t, values, colours), rtol=1e-5, atol=1e-5)
