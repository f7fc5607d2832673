"""Stand-in of modules.scripts: Script base, AlwaysVisible, scripts_data and the runner calls
process_images makes on always-visible scripts."""
import os
from collections import namedtuple

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []


class Script:
    name = None
    filename = None
    args_from = 0
    args_to = 0
    alwayson = False
    is_txt2img = False
    is_img2img = False

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass


def basedir():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ScriptRunner:
    """Runs the always-visible scripts (instances of every registered class whose show() is AlwaysVisible)."""

    def __init__(self):
        self.alwayson_scripts = []
        self.errors = []
        for d in scripts_data:
            s = d.script_class()
            if s.show(False) is AlwaysVisible:
                self.alwayson_scripts.append(s)

    # Like the WebUI, an always-visible script's exception is only reported (errors.report) and
    # generation goes on; `errors` collects them for tests.
    def _each(self, method, p, *extra):
        for s in self.alwayson_scripts:
            try:
                getattr(s, method)(p, *extra, *p.script_args[s.args_from:s.args_to])
            except Exception as e:      # noqa: BLE001 - what modules/scripts.py does
                self.errors.append((method, e))

    def before_process(self, p):
        self._each("before_process", p)

    def process(self, p):
        self._each("process", p)

    def postprocess(self, p, processed):
        self._each("postprocess", p, processed)
