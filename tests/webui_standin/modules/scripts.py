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
        for d in scripts_data:
            s = d.script_class()
            if s.show(False) is AlwaysVisible:
                self.alwayson_scripts.append(s)

    def before_process(self, p):
        for s in self.alwayson_scripts:
            s.before_process(p, *p.script_args[s.args_from:s.args_to])

    def process(self, p):
        for s in self.alwayson_scripts:
            s.process(p, *p.script_args[s.args_from:s.args_to])

    def postprocess(self, p, processed):
        for s in self.alwayson_scripts:
            s.postprocess(p, processed, *p.script_args[s.args_from:s.args_to])
