"""`lora inspect`: architecture, module kinds, ranks, alphas and metadata of a LoRA file."""
from __future__ import annotations

from collections import Counter

from merger.lora.formats import load_lora
from merger.lora.keymap import lora_arch


def describe(path: str) -> dict:
    """Summary of a LoRA: arch, kinds, module counts (UNet / text encoder), rank and alpha histograms."""
    f = load_lora(path, "LoRA")
    shapes = {n: tuple(m.weights["lora_down.weight"].shape) for n, m in f.modules.items() if "lora_down.weight" in m.weights}
    ranks = Counter(m.rank for m in f.modules.values())
    alphas = Counter(m.alpha for m in f.modules.values())
    return {
        "path": path,
        "arch": lora_arch(f.modules, f.metadata, shapes) or "unknown",
        "type": "+".join(sorted(f.kinds)) + ("+conv3x3" if any(m.kernel not in (None, (1, 1)) for m in f.modules.values()) else ""),
        "modules": len(f.modules),
        "unet_modules": sum(n.startswith("lora_unet_") for n in f.modules),
        "te_modules": sum(n.startswith("lora_te") for n in f.modules),
        "ranks": {str(k): v for k, v in sorted(ranks.items(), key=lambda x: (x[0] is None, x[0] or 0))},
        "alphas": {str(k): v for k, v in alphas.items()},
        "dtype": str(f.dtype).replace("torch.", ""),
        "metadata": {k: (v if len(v) < 200 else v[:200] + "…") for k, v in sorted(f.metadata.items())},
    }


def format_description(d: dict) -> str:
    lines = [f"{d['path']}", f"  arch: {d['arch']}   type: {d['type']}   dtype: {d['dtype']}",
             f"  modules: {d['modules']} (UNet {d['unet_modules']}, text encoder {d['te_modules']})",
             "  ranks: " + ", ".join(f"{k}×{v}" for k, v in d["ranks"].items()),
             "  alphas: " + ", ".join(f"{k}×{v}" for k, v in d["alphas"].items())]
    if d["metadata"]:
        lines.append("  metadata:")
        lines += [f"    {k}: {v}" for k, v in d["metadata"].items()]
    return "\n".join(lines)
