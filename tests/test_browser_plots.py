"""The charts in headless Chromium: the Compare plot and the block-weight curve render as images in
the standalone app and in the WebUI tab (the live tab over the WebUI stand-in); screenshots of the
rendered elements must show a chart, not a blank box."""
from __future__ import annotations

import io
import os
import textwrap

import pytest

from tests.test_browser import ARGS, CHROMIUM, _choose, serving, standalone_argv, tiny_models

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is absent (apt-get install chromium); no browser is downloaded")

LIVE_TAB = textwrap.dedent("""
    import sys, uvicorn, gradio as gr
    from fastapi import FastAPI
    from tests.webui_standin.harness import make_world
    from merger.session import Session
    from merger.ui import build_tab
    from merger.webui import WebUIHost
    tmp, port = sys.argv[1], int(sys.argv[2])
    make_world(tmp)
    demo = build_tab(Session(WebUIHost(), tmp + "/data"), live=True)
    demo.queue()
    uvicorn.run(gr.mount_gradio_app(FastAPI(), demo, path="/"), host="127.0.0.1", port=port, log_level="warning")
""")


@pytest.fixture(params=["standalone", "webui-tab"])
def page_url(request, tmp_path):
    if request.param == "standalone":
        argv, names = standalone_argv(tiny_models(tmp_path / "models"), tmp_path / "d"), ("a", "b")
    else:
        argv, names = (lambda port: [LIVE_TAB, str(tmp_path), str(port)]), ("A", "B")
    with serving(argv, timeout=60) as url:
        yield url, tuple(f"{n}.safetensors" for n in names), tmp_path


def _chart_like(png: bytes) -> bool:
    """A screenshot that holds a chart: many distinct colours and real contrast."""
    import numpy as np
    from PIL import Image
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return a.shape[0] > 100 and a.shape[1] > 300 and a.std() > 20 and len(np.unique(a.reshape(-1, 3), axis=0)) > 50


def test_compare_plot_and_weights_curve_render(page_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, (a, b), tmp = page_url
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#alloy_status", timeout=30000)
            page.click("#alloy_compare >> text=Compare two models")
            _choose(page, "alloy_cmp_a", a)
            _choose(page, "alloy_cmp_b", b)
            page.click("#alloy_cmp_run")
            page.wait_for_selector("#alloy_cmp_plot img", timeout=60000)
            page.wait_for_function("() => { const i = document.querySelector('#alloy_cmp_plot img');"
                                   " return i && i.complete && i.naturalWidth > 600; }", timeout=30000)
            # a locator, not the element handle: Gradio may replace the <img> while it loads
            compare_png = page.locator("#alloy_cmp_plot img").screenshot(path=str(tmp / "compare.png"))
            table = page.inner_text("#alloy_cmp_table")
            page.click("#alloy_blocks >> text=Block weights")
            page.wait_for_function("() => { const i = document.querySelector('#alloy_weights_plot img');"
                                   " return i && i.complete && i.naturalWidth > 300; }", timeout=30000)
            first = page.get_attribute("#alloy_weights_plot img", "src")      # drawn at page load
            page.fill("#alloy_alpha_blocks textarea", "GRAD_V")
            page.press("#alloy_alpha_blocks textarea", "Enter")
            page.wait_for_function("(first) => { const i = document.querySelector('#alloy_weights_plot img');"
                                   " return i && i.complete && i.naturalWidth > 300 && i.src !== first; }",
                                   arg=first, timeout=30000)
            curve_png = page.locator("#alloy_weights_plot img").screenshot(path=str(tmp / "curve.png"))
        finally:
            browser.close()
    assert "OUT11" in table and "UNet" in table
    assert _chart_like(compare_png) and _chart_like(curve_png)
