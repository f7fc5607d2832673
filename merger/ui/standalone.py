"""`python -m merger ui`: the Alloy tab as a plain local Gradio app (merges to files, no WebUI).

Serves on 127.0.0.1 only. The REST API router (`merger.api.create_router`) is mounted beside the
page when that module is present.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import webbrowser
from pathlib import Path

from ..errors import AlloyError

DEFAULT_PORT = 7870
LOCALHOST = "127.0.0.1"


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m merger ui", description="Alloy's merge UI in the browser.")
    p.add_argument("--models-dir", default=os.environ.get("ALLOY_MODELS_DIR", "."),
                   help="folder with the checkpoints to merge; merged files are written here")
    p.add_argument("--lora-dir", default=os.environ.get("ALLOY_LORA_DIR"),
                   help="folder with LoRAs for the LoRA tools (default: the models folder)")
    p.add_argument("--data-dir", default=None,
                   help="folder for history and user presets (default: <models-dir>/.alloy)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    return p.parse_args(argv)


def style_css() -> str:
    """The extension's style.css (the WebUI loads it by itself; the standalone page is given it)."""
    path = Path(__file__).resolve().parents[2] / "style.css"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def make_session(models_dir: str, data_dir: str | None = None, lora_dir: str | None = None):
    """A Session over a folder of checkpoints (standalone host: no live model)."""
    from ..session import Session, StandaloneHost
    from ..settings import Settings
    models_dir = os.path.abspath(models_dir)
    if not os.path.isdir(models_dir):
        raise AlloyError(f"The models folder {models_dir} does not exist.")
    data_dir = os.path.abspath(data_dir or os.path.join(models_dir, ".alloy"))
    os.makedirs(data_dir, exist_ok=True)
    return Session(StandaloneHost(models_dir, lora_dir), data_dir, Settings())


def create_app(session):
    """FastAPI app: the REST API (when available) and the tab at "/"."""
    import gradio as gr
    from fastapi import FastAPI

    from . import build_tab
    app = FastAPI(title="Alloy")
    try:
        from ..api import create_router
    except ImportError:
        create_router = None
    if create_router is not None:
        app.include_router(create_router(session))
    demo = build_tab(session, live=False, css=style_css())
    try:
        demo.queue(concurrency_count=4)      # gradio 3.x: Stop must not wait behind a merge
    except (TypeError, DeprecationWarning):  # gradio 4 refuses concurrency_count (4.40: DeprecationWarning)
        demo.queue(default_concurrency_limit=4)
    return gr.mount_gradio_app(app, demo, path="/")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        session = make_session(args.models_dir, args.data_dir, args.lora_dir)
    except AlloyError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    import uvicorn
    app = create_app(session)
    url = f"http://{LOCALHOST}:{args.port}/"
    print(f"Alloy UI on {url} (models: {os.path.abspath(args.models_dir)}); Ctrl+C stops it.", flush=True)
    if not args.no_browser:
        threading.Timer(1.5, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=LOCALHOST, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
