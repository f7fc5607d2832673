"""Alloy's WebUI entry point: registration only, through the adapter of the WebUI it runs in
(merger/forge.py in Stable Diffusion WebUI Forge, merger/webui.py in AUTOMATIC1111's)."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from merger import forge, webui  # noqa: E402

AlloyScript = (forge if forge.detected() else webui).register()
