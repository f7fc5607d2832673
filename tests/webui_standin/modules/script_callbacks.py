"""Stand-in of modules.script_callbacks: registration lists and the callers the WebUI uses."""
from collections import namedtuple

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])
CATEGORIES = ("app_started", "model_loaded", "ui_tabs", "ui_settings", "before_ui",
              "before_image_saved", "image_saved", "infotext_pasted", "script_unloaded")
callback_map = {"callbacks_" + c: [] for c in CATEGORIES}


def _add(category, fn, name=None):
    callback_map["callbacks_" + category].append(ScriptCallback("alloy", fn, name or repr(fn)))


def clear_callbacks():
    for lst in callback_map.values():
        lst.clear()


def on_app_started(callback, *, name=None): _add("app_started", callback, name)
def on_model_loaded(callback, *, name=None): _add("model_loaded", callback, name)
def on_ui_tabs(callback, *, name=None): _add("ui_tabs", callback, name)
def on_ui_settings(callback, *, name=None): _add("ui_settings", callback, name)
def on_before_ui(callback, *, name=None): _add("before_ui", callback, name)
def on_before_image_saved(callback, *, name=None): _add("before_image_saved", callback, name)
def on_infotext_pasted(callback, *, name=None): _add("infotext_pasted", callback, name)
def on_script_unloaded(callback, *, name=None): _add("script_unloaded", callback, name)


def app_started_callback(demo, app):
    for c in callback_map["callbacks_app_started"]:
        c.callback(demo, app)


def model_loaded_callback(sd_model):
    for c in callback_map["callbacks_model_loaded"]:
        c.callback(sd_model)


def ui_tabs_callback():
    res = []
    for c in callback_map["callbacks_ui_tabs"]:
        res += c.callback() or []
    return res


def ui_settings_callback():
    for c in callback_map["callbacks_ui_settings"]:
        c.callback()


def before_ui_callback():
    for c in callback_map["callbacks_before_ui"]:
        c.callback()
