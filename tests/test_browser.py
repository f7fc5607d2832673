"""The standalone UI in headless Chromium: choose two models, merge to a file, see status and file."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ui_fixtures import write_tiny_sd1

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is absent (apt-get install chromium); no browser is downloaded")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc, timeout: float = 40.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            proc.stdout.seek(0)
            raise AssertionError(f"the UI exited early: {proc.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the UI did not start listening in time")


STANDALONE = "import sys; from merger.ui.standalone import main; sys.exit(main(sys.argv[1:]))"


def tiny_models(folder: Path) -> Path:
    """A models folder with tiny SD1 checkpoints a.safetensors and b.safetensors."""
    folder.mkdir()
    write_tiny_sd1(folder / "a.safetensors", 1)
    write_tiny_sd1(folder / "b.safetensors", 2)
    return folder


@contextlib.contextmanager
def serving(argv_for_port, timeout: float = 40.0):
    """Run `python -c <argv_for_port(port)>` from the repository until the block ends; yields the URL."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = tempfile.TemporaryFile(mode="w+")     # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen([sys.executable, "-c", *argv_for_port(port)], cwd=str(REPO), env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.stdout = log
    try:
        _wait_port(port, proc, timeout)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def standalone_argv(models: Path, data: Path):
    return lambda port: [STANDALONE, "--models-dir", str(models), "--data-dir", str(data),
                         "--port", str(port), "--no-browser"]


@pytest.fixture
def app(tmp_path):
    models = tiny_models(tmp_path / "models")
    with serving(standalone_argv(models, tmp_path / "data")) as url:
        yield url, models


def _choose(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.locator("ul.options li", has_text=option).first.click()


def test_merge_to_file_in_browser(app):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, models = app
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(url)
            page.wait_for_selector("#alloy_status", timeout=20000)
            assert not page.is_visible("#alloy_merge")           # standalone: files only
            _choose(page, "alloy_model_a", "a.safetensors")
            _choose(page, "alloy_model_b", "b.safetensors")
            page.fill("#alloy_out_name textarea", "browser_merge")
            page.click("#alloy_merge_file")
            page.wait_for_function(
                "() => /keys merged/.test(document.querySelector('#alloy_status textarea').value)",
                timeout=30000)
            status = page.input_value("#alloy_status textarea")
            recipe = page.input_value("#alloy_recipe_json textarea")
        finally:
            browser.close()
    assert "browser_merge.safetensors" in status
    assert (models / "browser_merge.safetensors").is_file()
    assert '"model_b"' in recipe and "b.safetensors" in recipe
    try:
        import merger.api  # noqa: F401
    except ImportError:
        return
    with urllib.request.urlopen(url + "alloy/v1/status", timeout=10) as r:   # REST API mounted beside the page
        assert json.load(r)["busy"] is False
