"""SD1.x / SD2.x: 26 blocks (BASE, IN00…IN11, M00, OUT00…OUT11), spec §5.3 + §20.1.

Key → block, first rule that applies:
  no ``model`` in the name, or neither ``weight`` nor ``bias``   → None (never merged)
  ``time_embed`` (incl. EMA copies) or ``.out.``                  → OUT11
  ``.input_blocks.N.``                                            → IN(N)
  ``.middle_block.N.``                                            → M00
  ``.output_blocks.N.``                                           → OUT(N)
  anything else (text encoder, VAE, other EMA keys)               → BASE
"""
from __future__ import annotations

import re

from .common import SD_UNET_ROOTS, UNET_PREFIX, block_index, canonical, has_weight_or_bias

BLOCK_IDS = ("BASE",) + tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(12))

_RE_IN = re.compile(r"\.input_blocks\.(\d+)\.")
_RE_MID = re.compile(r"\.middle_block\.(\d+)\.")
_RE_OUT = re.compile(r"\.output_blocks\.(\d+)\.")

ADJUST_KEYS = {
    "in_w": UNET_PREFIX + "input_blocks.0.0.weight",
    "in_b": UNET_PREFIX + "input_blocks.0.0.bias",
    "out0_w": UNET_PREFIX + "out.0.weight",
    "out0_b": UNET_PREFIX + "out.0.bias",
    "out2_w": UNET_PREFIX + "out.2.weight",
    "out2_b": UNET_PREFIX + "out.2.bias",
}
SD1_POSITION_IDS = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)
SD2_POSITION_IDS: tuple[str, ...] = ()


def canonical_key(key: str) -> str:
    return canonical(key, SD_UNET_ROOTS)


def block_of(key: str) -> str | None:
    """The 26-list block of ``key`` (see the module docstring), or None when it is never merged."""
    k = canonical_key(key)
    if "model" not in k or not has_weight_or_bias(k):
        return None
    if "time_embed" in k or ".out." in k:
        return "OUT11"
    m = _RE_IN.search(k)
    if m:
        return block_index("IN", int(m.group(1)), 12)
    if _RE_MID.search(k):
        return "M00"
    m = _RE_OUT.search(k)
    if m:
        return block_index("OUT", int(m.group(1)), 12)
    return "BASE"


def is_vae(key: str) -> bool:
    return key.startswith("first_stage_model.")


def is_text_encoder(key: str) -> bool:
    return key.startswith("cond_stage_model.")


def prune_keep(key: str) -> bool:
    """§11: keep UNet, VAE and text-encoder keys; drop EMA, schedule buffers and anything else."""
    k = canonical_key(key)
    return any(p in k for p in ("diffusion_model.", "first_stage_model.", "cond_stage_model."))
