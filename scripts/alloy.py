"""Alloy's WebUI entry point: registration only (see merger/webui.py)."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from merger import webui  # noqa: E402

AlloyScript = webui.register()
