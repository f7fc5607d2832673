"""Stand-in of scripts/xyz_grid.py (v1.10.1): AxisOption, axis_options, CSV value parsing with
quotes, type conversion, cost ordering (the costliest axis is the outermost loop) and the cell
loop: pc = copy(p); x.apply, y.apply, z.apply; process_images(pc). The WebUI loads this file as
a module named "xyz_grid.py"."""
import csv
from copy import copy
from io import StringIO
from itertools import chain

from modules import processing, scripts, shared


def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)
    return fun


def do_nothing(p, x, xs):
    pass


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {x}"


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply, self.format_value = label, type, apply, format_value
        self.confirm, self.cost, self.prepare, self.choices = confirm, cost, prepare, choices


axis_options = [
    AxisOption("Nothing", str, do_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Prompt S/R", str, apply_field("prompt")),
]


def csv_string_to_list_strip(data_str):
    return list(map(str.strip, chain.from_iterable(csv.reader(StringIO(data_str), skipinitialspace=True))))


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        self.current_axis_options = [x for x in axis_options]
        return []

    def run(self, p, x_type, x_values, y_type=0, y_values="", z_type=0, z_values=""):
        opts_list = self.current_axis_options

        def process_axis(opt, vals):
            if opt.label == "Nothing":
                return [0]
            valslist = opt.prepare(vals) if opt.prepare is not None else csv_string_to_list_strip(vals)
            valslist = [opt.type(v) for v in valslist if str(v).strip() != ""]
            if opt.confirm:
                opt.confirm(p, valslist)
            return valslist

        x_opt, y_opt, z_opt = opts_list[x_type], opts_list[y_type], opts_list[z_type]
        xs, ys, zs = process_axis(x_opt, x_values), process_axis(y_opt, y_values), process_axis(z_opt, z_values)
        first, second = "z", "y"
        if x_opt.cost > y_opt.cost and x_opt.cost > z_opt.cost:
            first, second = "x", ("y" if y_opt.cost > z_opt.cost else "z")
        elif y_opt.cost > x_opt.cost and y_opt.cost > z_opt.cost:
            first, second = "y", ("x" if x_opt.cost > z_opt.cost else "z")
        elif z_opt.cost > x_opt.cost and z_opt.cost > y_opt.cost:
            first, second = "z", ("x" if x_opt.cost > y_opt.cost else "y")
        else:
            first, second = "x", "y"     # equal costs: plain x-outer ordering is enough for the stand-in
        results = []
        shared.state.job_count = len(xs) * len(ys) * len(zs)

        def cell(ix, iy, iz):
            if shared.state.interrupted:
                return
            pc = copy(p)
            pc.styles = pc.styles[:]
            x_opt.apply(pc, xs[ix], xs)
            y_opt.apply(pc, ys[iy], ys)
            z_opt.apply(pc, zs[iz], zs)
            results.append(((ix, iy, iz), processing.process_images(pc)))

        axes = {"x": xs, "y": ys, "z": zs}
        third = ({"x", "y", "z"} - {first, second}).pop()
        for i in range(len(axes[first])):
            for j in range(len(axes[second])):
                for k in range(len(axes[third])):
                    idx = {first: i, second: j, third: k}
                    cell(idx["x"], idx["y"], idx["z"])
        return results
