"""SDXL base: 20 blocks (BASE, IN00…IN08, M00, OUT00…OUT08), spec §5.3.

Key → block, first rule that applies:
  no ``model`` in the name, or neither ``weight`` nor ``bias``   → None
  ``label_emb`` or ``time_embed``                                 → IN00
  ``conditioner.embedders.0.`` / ``.1.`` (CLIP-L / OpenCLIP-G)    → BASE
  ``first_stage_model`` (VAE)                                     → BASE
  ``model.diffusion_model.out.``                                  → OUT08
  ``input_blocks.N`` / ``middle_block`` / ``output_blocks.N``     → IN0N / M00 / OUT0N
  anything else (``cond_stage_model.*`` aliases, EMA, …)          → None ("Not Merge")
"""
from __future__ import annotations

import re

from .common import UNET_PREFIX, block_index, has_weight_or_bias
from .sd import ADJUST_KEYS as _SD_ADJUST_KEYS
from .sd import canonical_key  # same bare-UNet key rule as SD1/SD2

BLOCK_IDS = ("BASE",) + tuple(f"IN{i:02d}" for i in range(9)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(9))

_RE_IN = re.compile(r"\.input_blocks\.(\d+)\.")
_RE_MID = re.compile(r"\.middle_block\.(\d+)\.")
_RE_OUT = re.compile(r"\.output_blocks\.(\d+)\.")
_TEXT_PREFIXES = ("conditioner.embedders.0.", "conditioner.embedders.1.")

ADJUST_KEYS = dict(_SD_ADJUST_KEYS)
POSITION_IDS = ("conditioner.embedders.0.transformer.text_model.embeddings.position_ids",)


def block_of(key: str) -> str | None:
    """The 20-list block of ``key`` (see the module docstring), or None when it is never merged."""
    k = canonical_key(key)
    if "model" not in k or not has_weight_or_bias(k):
        return None
    if "label_emb" in k or "time_embed" in k:
        return "IN00"
    if k.startswith(_TEXT_PREFIXES) or k.startswith("first_stage_model."):
        return "BASE"
    if not k.startswith(UNET_PREFIX):
        return None
    if k.startswith(UNET_PREFIX + "out."):
        return "OUT08"
    m = _RE_IN.search(k)
    if m:
        return block_index("IN", int(m.group(1)), 9)
    if _RE_MID.search(k):
        return "M00"
    m = _RE_OUT.search(k)
    if m:
        return block_index("OUT", int(m.group(1)), 9)
    return None


def is_vae(key: str) -> bool:
    return key.startswith("first_stage_model.")


def is_text_encoder(key: str) -> bool:
    return key.startswith(("conditioner.embedders.", "cond_stage_model."))


def is_alias(key: str) -> bool:
    """``cond_stage_model.*`` keys in an SDXL file are shared-memory aliases of ``conditioner.*`` (§11)."""
    return key.startswith("cond_stage_model.")


def prune_keep(key: str) -> bool:
    """§11: keep UNet, VAE and ``conditioner.`` keys; aliases, EMA and buffers are dropped."""
    if is_alias(key):
        return False
    k = canonical_key(key)
    return any(p in k for p in ("diffusion_model.", "first_stage_model.", "conditioner."))
