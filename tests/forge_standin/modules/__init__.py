"""Forge's `modules` package (stand-in): Forge's own sd_models, shared and processing here; the
parts Forge keeps from AUTOMATIC1111 (options, shared_state, script_callbacks, scripts,
call_queue) are taken from the A1111 stand-in's folder."""
import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "webui_standin", "modules"))
