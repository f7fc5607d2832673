"""The "LoRA" section of the Alloy tab: bake into a checkpoint, merge LoRAs, extract, resize.

`build_lora_panel(session, lora_dir=None)` builds Gradio 3.41 components (common subset with
Forge's shim: `gr.update`, no `.style()`). LoRA pickers list `lora_dir` (argument, else
`session.host.lora_dir()` when the host has one; standalone: `--lora-dir`). Handlers are plain
functions of field values (testable without Gradio) that call `merger.lora.api`.
"""
from __future__ import annotations

import os

from merger.errors import AlloyError
from merger.lora.api import session_resolver
from merger.lora.blocks import parse_spec

LORA_EXTS = (".safetensors", ".pt", ".ckpt")


def list_loras(folder: str | None) -> list[str]:
    """LoRA files under `folder` (relative paths, sorted); [] when there is no folder."""
    if not folder or not os.path.isdir(folder):
        return []
    out = []
    for root, _, files in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, f), folder) for f in files if f.lower().endswith(LORA_EXTS)]
    return sorted(out)


make_resolver = session_resolver


def lora_lines(text: str) -> list[str]:
    """One `NAME:RATIO[:BLOCKS]` per line (blank lines ignored)."""
    return [ln.strip() for ln in (text or "").splitlines() if ln.strip()]


def run_op(op: str, f: dict, resolve, progress=None) -> tuple[str, str]:
    """Run `op` with UI field values -> (status line, report text). Errors become the status."""
    from merger.lora import api

    req = {"out": f.get("out"), "overwrite": bool(f.get("overwrite")), "device": f.get("device") or "auto",
           "dtype": f.get("dtype") or "keep"}
    if op in ("bake", "merge"):
        req["loras"] = lora_lines(f.get("loras", ""))
    if op == "bake":
        req.update(model=f.get("model"))
    elif op == "merge":
        concat = f.get("mode") == "concat"
        req.update(mode="concat" if concat else "svd", rank=None if concat else int(f.get("rank") or 8),
                   conv_rank=int(f["conv_rank"]) if f.get("conv_rank") else None,
                   clamp_quantile=float(f["clamp"]) if f.get("clamp") else None)
    elif op == "extract":
        req.update(tuned=f.get("model"), base=f.get("base"), rank=int(f.get("rank") or 8),
                   conv_rank=int(f["conv_rank"]) if f.get("conv_rank") else None,
                   min_diff=float(f.get("min_diff") or 0.01),
                   clamp_quantile=float(f["clamp"]) if f.get("clamp") else None)
    elif op == "resize":
        dyn = f.get("dynamic") or "none"
        first = lora_lines(f.get("loras", ""))
        req.update(lora=f.get("lora") or (parse_spec(first[0]).path if first else ""),
                   rank=int(f["rank"]) if f.get("rank") else None, dynamic=None if dyn == "none" else dyn,
                   param=float(f["param"]) if f.get("param") not in (None, "") else None,
                   conv_rank=int(f["conv_rank"]) if f.get("conv_rank") else None, verbose=True)
    try:
        res = api.OPERATIONS[op](req, resolve, progress)
    except AlloyError as e:
        return f"Error: {e}", ""
    return res["message"], report_text(res)


def report_text(res: dict) -> str:
    lines = []
    if res.get("unmatched"):
        lines.append(f"Unmatched modules ({len(res['unmatched'])}):")
        lines += [f"  {n}" for n in res["unmatched"]]
    if res.get("errors"):
        worst = sorted(res["errors"].items(), key=lambda x: -x[1])[:20]
        lines.append("Largest relative errors (module: rank, error):")
        lines += [f"  {n}: {res['ranks'].get(n)}, {e:.4g}" for n, e in worst]
    lines += res.get("messages", [])[:200]
    return "\n".join(lines)


def build_lora_panel(session, lora_dir: str | None = None):
    """Build the LoRA section inside the current Gradio Blocks context."""
    import gradio as gr

    host = getattr(session, "host", None)
    if lora_dir is None and host is not None and hasattr(host, "lora_dir"):
        lora_dir = host.lora_dir()
    resolve = make_resolver(session, lora_dir)
    models = host.list_models() if host is not None else []
    with gr.Column(elem_id="alloy_lora_panel"):
        op = gr.Radio(["bake", "merge", "extract", "resize"], value="merge", label="Operation", elem_id="alloy_lora_op")
        with gr.Row():
            pick = gr.Dropdown(list_loras(lora_dir), label=f"LoRA folder: {lora_dir or '(none; type paths)'}",
                               elem_id="alloy_lora_pick")
            ratio = gr.Number(value=1.0, label="Ratio", elem_id="alloy_lora_ratio")
            blocks = gr.Textbox(label="Block weights (preset or 12/17/20/26/61 values)", elem_id="alloy_lora_blocks")
            add = gr.Button("Add", elem_id="alloy_lora_add")
        loras = gr.Textbox(label="LoRAs, one per line: NAME:RATIO[:BLOCKS]", lines=3, elem_id="alloy_lora_list")
        with gr.Row():
            model = gr.Dropdown(models, label="Model (bake) / tuned model (extract)", allow_custom_value=True,
                                elem_id="alloy_lora_model")
            base = gr.Dropdown(models, label="Base model (extract)", allow_custom_value=True, elem_id="alloy_lora_base")
        with gr.Row():
            mode = gr.Radio(["svd", "concat"], value="svd", label="Merge mode", elem_id="alloy_lora_mode")
            rank = gr.Number(value=8, precision=0, label="Rank (resize: max rank)", elem_id="alloy_lora_rank")
            conv_rank = gr.Number(value=None, precision=0, label="Conv rank", elem_id="alloy_lora_conv_rank")
            clamp = gr.Textbox(value="", label="Clamp quantile (empty: 0.99 as kohya; 1: none)",
                               elem_id="alloy_lora_clamp")
        with gr.Row():
            dynamic = gr.Dropdown(["none", "sv_fro", "sv_ratio", "sv_cumulative"], value="none",
                                  label="Dynamic resize", elem_id="alloy_lora_dynamic")
            param = gr.Textbox(value="", label="Dynamic parameter", elem_id="alloy_lora_param")
            min_diff = gr.Number(value=0.01, label="Min diff (extract)", elem_id="alloy_lora_min_diff")
            dtype = gr.Dropdown(["fp16", "bf16", "fp32", "keep"], value="keep",
                                label="Save dtype (keep: the input's; extract: fp32)",
                                elem_id="alloy_lora_dtype")
        with gr.Row():
            out = gr.Textbox(label="Output file name", elem_id="alloy_lora_out")
            overwrite = gr.Checkbox(False, label="Overwrite", elem_id="alloy_lora_overwrite")
            device = gr.Dropdown(["auto", "cpu", "cuda"], value="auto", label="Device", elem_id="alloy_lora_device")
            go = gr.Button("Run", variant="primary", elem_id="alloy_lora_run")
        status = gr.Textbox(label="Result", interactive=False, elem_id="alloy_lora_status")
        report = gr.Textbox(label="Report (unmatched modules, errors per module)", lines=8, interactive=False,
                            elem_id="alloy_lora_report")

    def on_add(current, name, r, b):
        if not name:
            return gr.update()
        line = f"{name}:{r if r is not None else 1.0}" + (f":{b.strip()}" if b and b.strip() else "")
        return gr.update(value=(current.rstrip() + "\n" if current and current.strip() else "") + line)

    def on_run(op_, loras_, model_, base_, mode_, rank_, conv_, clamp_, dyn_, param_, md_, dt_, out_, ow_, dev_,
               progress=gr.Progress()):
        f = {"loras": loras_, "model": model_, "base": base_, "mode": mode_, "rank": rank_, "conv_rank": conv_,
             "clamp": clamp_, "dynamic": dyn_, "param": param_, "min_diff": md_, "dtype": dt_, "out": out_,
             "overwrite": ow_, "device": dev_}
        prog = (lambda d, t, name: progress(d / max(t, 1), desc=op_)) if progress is not None else None
        return run_op(op_, f, resolve, prog)

    add.click(on_add, [loras, pick, ratio, blocks], [loras])
    go.click(on_run, [op, loras, model, base, mode, rank, conv_rank, clamp, dynamic, param, min_diff, dtype, out,
                      overwrite, device], [status, report])
    return {"op": op, "loras": loras, "run": go, "status": status, "report": report}
