"""Block-weight editor and mode/calc handlers of the Alloy tab (called directly, no browser)."""
from __future__ import annotations

import pytest

pytest.importorskip("gradio")

from merger.arch import get_arch  # noqa: E402
from merger.methods import valid_calcs  # noqa: E402
from merger.ui import blocks_editor as be  # noqa: E402
from merger.ui import blocks_logic as bl  # noqa: E402
from merger.ui.context import TabContext  # noqa: E402
from merger.ui.merge_panel import method_view  # noqa: E402
from merger.ui.wiring import run_guarded  # noqa: E402


class _Host:
    def list_models(self):
        return []


class _Session:
    host = _Host()
    data_dir = None


@pytest.fixture
def ctx():
    return TabContext(_Session(), live=False)


def _visible(out):
    return [out[n]["value"] for n in bl.SLIDER_NAMES if out[n].get("visible")]


def _labels(out):
    return [out[n]["label"] for n in bl.SLIDER_NAMES if out[n].get("visible")]


@pytest.mark.parametrize("arch,n", [("sd1", 26), ("sd2", 26), ("sdxl", 20), ("flux", 61)])
def test_arch_shows_its_blocks(ctx, arch, n):
    out = be.on_arch(ctx, {"arch": arch, "blocks_target": "alpha", "alpha": 0.3})
    assert _labels(out) == list(get_arch(arch).block_ids)
    assert _visible(out) == [0.3] * n                      # empty list: the sliders show the scalar alpha
    hidden = [name for name in bl.SLIDER_NAMES if out[name].get("visible") is False]
    assert len(hidden) == bl.MAX_SLIDERS - n
    assert set(out["preset"]["choices"]) == set(ctx.presets.names(get_arch(arch)))
    assert "status" not in out


def test_mode_change_offers_only_valid_calcs():
    for label, mode in (("Weight sum", "weight_sum"), ("Add difference", "add_difference"),
                        ("Triple sum", "triple_sum"), ("sum Twice", "sum_twice")):
        view = method_view(label, "normal")
        assert view["calc"]["choices"] == list(valid_calcs(mode))
        assert view["calc"]["value"] == "normal"
    view = method_view("Add difference", "cosineA")          # invalid pair: calc falls back
    assert "cosineA" not in view["calc"]["choices"]
    assert view["calc"]["value"] == valid_calcs("add_difference")[0]
    assert view["model_c"]["visible"] is True
    ws = method_view("Weight sum", "normal")
    assert ws["model_c"]["visible"] is False and ws["beta"]["visible"] is False
    assert ws["gamma"]["visible"] is False
    ts = method_view("Triple sum", "normal")
    assert ts["beta"]["visible"] is True and ts["beta_blocks"]["visible"] is True


def test_preset_fills_text_and_sliders(ctx):
    want = ctx.presets.get("GRAD_V", get_arch("sd1"))
    out = be.on_preset(ctx, {"preset": "GRAD_V", "arch": "sd1", "blocks_target": "beta"})
    assert _visible(out) == pytest.approx(want)
    assert "alpha_blocks" not in out
    assert [float(x) for x in out["beta_blocks"].split(",")] == pytest.approx(want, abs=1e-6)


def test_preset_on_sdxl_is_converted_to_20(ctx):
    out = be.on_preset(ctx, {"preset": "GRAD_V", "arch": "sdxl", "blocks_target": "alpha"})
    assert len(out["alpha_blocks"].split(",")) == 20
    assert len(_visible(out)) == 20


def test_sliders_to_text_and_back(ctx):
    values = [round(-1 + 0.1 * i, 2) for i in range(26)]
    fields = {"arch": "sd1", "blocks_target": "alpha", **dict(zip(bl.SLIDER_NAMES, values)),
              "slider_40": 1.5}                                   # hidden sliders are not written
    text = be.on_slider_release(ctx, fields)["alpha_blocks"]
    assert [float(x) for x in text.split(",")] == pytest.approx(values)
    out = be.on_text(ctx, {"arch": "sd1", "blocks_target": "alpha", "alpha_blocks": text}, "alpha")
    assert _visible(out) == pytest.approx(values)
    # editing the list the sliders do not show leaves them alone
    assert be.on_text(ctx, {"arch": "sd1", "blocks_target": "alpha", "beta_blocks": text}, "beta") == {}


def test_text_accepts_a_preset_name(ctx):
    out = be.on_text(ctx, {"arch": "sd1", "blocks_target": "alpha", "alpha_blocks": "FLAT_25"}, "alpha")
    assert _visible(out) == pytest.approx(ctx.presets.get("FLAT_25", get_arch("sd1")))


def test_bad_text_is_a_sentence(ctx):
    out = run_guarded(lambda f: be.on_text(ctx, f, "alpha"),
                      {"arch": "sd1", "blocks_target": "alpha", "alpha_blocks": "0.1,0.2,0.3"})
    assert set(out) == {"status"}
    assert "Traceback" not in out["status"] and out["status"].endswith(".")


def test_list_that_does_not_fit_new_arch(ctx):
    out = be.on_arch(ctx, {"arch": "flux", "blocks_target": "alpha", "alpha": 0.5,
                           "alpha_blocks": ",".join(["0.5"] * 26)})
    assert "does not fit FLUX" in out["status"]
    assert len(_visible(out)) == 61


def test_axis_value_is_quoted_and_appended(ctx):
    f = {"blocks_target": "alpha", "arch": "sdxl", "alpha_blocks": ",".join(["1"] * 20),
         "axis_values": '"0,0"'}
    out = be.on_axis_append(ctx, f)
    assert out["axis_values"] == '"0,0","' + ",".join(["1"] * 20) + '"'
    # an empty list takes the slider values
    f2 = {"blocks_target": "beta", "arch": "sdxl", "beta_blocks": "", "axis_values": "",
          **{n: 0.25 for n in bl.SLIDER_NAMES}}
    assert be.on_axis_append(ctx, f2)["axis_values"] == '"' + ",".join(["0.25"] * 20) + '"'


def test_progress_adapter_reports_fractions():
    from merger.ui.wiring import GradioProgress
    calls = []
    progress = GradioProgress(lambda frac, desc=None: calls.append((frac, desc)))
    progress(5, 10, "model.diffusion_model.out.0.weight")
    progress(0.25)
    progress(3, 0, "empty")
    assert calls == [(0.5, "model.diffusion_model.out.0.weight"), (0.25, None), (1.0, "empty")]
    GradioProgress(None)(1, 2, "x")                               # no progress bar: nothing happens
