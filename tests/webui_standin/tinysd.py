"""A real torch module tree with the SD1.5 checkpoint keys (from merger/layouts) and
tiny shapes, plus writers of matching tiny .safetensors files. 2-D weights are nn.Linear and 4-D
weights nn.Conv2d (so the Lora stand-in and the fp8 option treat them as the WebUI does)."""
from __future__ import annotations

import hashlib

import torch
from safetensors.torch import save_file

ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def tiny_shape(shape) -> tuple:
    """Each dimension d → min(d, 3): every key keeps its rank."""
    return tuple(min(int(d), 3) for d in shape)


def layout(arch: str = "sd1", full: bool = False) -> list[tuple[str, tuple, torch.dtype, str]]:
    """(key, shape, native dtype, component) of the default single-file checkpoint."""
    from merger import layouts
    d = layouts.load(arch)
    out = []
    for row in d["tensors"]:
        key, shape, dt, comp = row[0], row[1], row[2], row[3]
        if len(row) > 5 and not row[5]:
            continue
        out.append((key, tuple(shape) if full else tiny_shape(shape), ST_DTYPES[dt], comp))
    return out


REQUIRED = ("position_ids", "token_embedding", "input_blocks.1.1.transformer_blocks.0.attn1.to_q.", "input_blocks.1.1.proj_in.",
            "diffusion_model.out.2.", "first_stage_model.encoder.conv_in.", "first_stage_model.decoder.conv_out.",
            "input_blocks.4.1.proj_in.", "middle_block.1.proj_in.")


def small_layout(arch: str = "sd1", every: int = 4) -> list:
    """Every `every`-th key of the layout plus REQUIRED ones (fast tests; names stay real)."""
    return [e for i, e in enumerate(layout(arch)) if i % every == 0 or any(r in e[0] for r in REQUIRED)]


class Node(torch.nn.Module):
    """A container holding whatever parameters/buffers/children its keys need."""


def _leaf_kind(attrs: dict) -> str:
    w = attrs.get("weight")
    if w is None or set(attrs) - {"weight", "bias"}:
        return "node"
    return {2: "linear", 4: "conv"}.get(len(w[0]), "node")


def build_model(entries=None, dtype=torch.float32) -> torch.nn.Module:
    """A module tree whose state_dict keys are exactly the layout keys (values: zeros)."""
    entries = entries or small_layout()
    groups: dict[str, dict] = {}
    for key, shape, dt, comp in entries:
        mod, _, attr = key.rpartition(".")
        groups.setdefault(mod, {})[attr] = (shape, dt, comp)
    prefixes = set()
    for m in groups:
        parts = m.split(".")
        prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
    root = Node()
    for mod in sorted(groups):
        attrs = groups[mod]
        kind = _leaf_kind(attrs) if mod not in prefixes else "node"
        parent, name = _ensure_parent(root, mod)
        if kind == "linear":
            shape = attrs["weight"][0]
            leaf = torch.nn.Linear(shape[1], shape[0], bias="bias" in attrs)
        elif kind == "conv":
            shape = attrs["weight"][0]
            leaf = torch.nn.Conv2d(shape[1], shape[0], shape[2:], bias="bias" in attrs)
        else:
            leaf = _get_or_make(parent, name) if name else parent
            for attr, (shape, dt, comp) in attrs.items():
                t = torch.zeros(shape, dtype=dt if not dt.is_floating_point else dtype)
                if not dt.is_floating_point or comp == "scheduler":
                    leaf.register_buffer(attr, t)
                else:
                    leaf.register_parameter(attr, torch.nn.Parameter(t, requires_grad=False))
            continue
        for p in leaf.parameters():
            p.requires_grad_(False)
        leaf.to(dtype)
        setattr(parent, name, leaf)
    root.is_sdxl = False
    root.lowvram = False
    return root


def _get_or_make(parent, name):
    child = getattr(parent, name, None) if name in parent._modules else None
    if child is None:
        child = Node()
        parent.add_module(name, child)
    return child


def _ensure_parent(root, mod: str):
    if not mod:
        return root, ""
    parts = mod.split(".")
    node = root
    for p in parts[:-1]:
        node = _get_or_make(node, p)
    return node, parts[-1]


def random_state_dict(seed: int, dtype=torch.float16, entries=None, scale: float = 1.0) -> dict:
    """Seeded random tensors for every layout key (ints: arange; dtype for floats)."""
    entries = entries or small_layout()
    sd = {}
    for key, shape, dt, comp in entries:
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:7], "little"))
        if not dt.is_floating_point:
            n = 1
            for d in shape:
                n *= d
            sd[key] = torch.arange(n, dtype=dt).reshape(shape)
        else:
            sd[key] = (torch.randn(shape, generator=g) * scale).to(dtype)
    return sd


def write_checkpoint(path, seed: int, dtype=torch.float16, entries=None) -> str:
    save_file(random_state_dict(seed, dtype, entries), str(path))
    return str(path)


def write_vae(path, seed: int, dtype=torch.float16) -> str:
    """A separate VAE file (bare keys, like real VAE releases)."""
    sd = random_state_dict(seed, dtype)
    vae = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    save_file(vae, str(path))
    return str(path)
