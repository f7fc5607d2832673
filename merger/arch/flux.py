"""Flux.1: 61 blocks (CLIP, T5, IN, D00…D18, S00…S37, OUT), spec §5.3.

Key → block, first rule that applies:
  VAE (``vae.`` / ``first_stage_model.``)                      → None (never merged)
  neither ``weight`` nor ``bias`` and not a norm ``….scale``   → None
  ``t5xxl``                                                    → T5
  ``text_encoders.clip``                                       → CLIP
  ``double_blocks.N.`` / ``single_blocks.N.``                  → D(N) / S(N)
  ``_in`` (img_in, txt_in, time_in, vector_in, guidance_in)    → IN
  ``final_layer``                                              → OUT
  anything else                                                → None

Deviation from SuperMerger: the RMSNorm gains ``…norm.query_norm.scale`` / ``key_norm.scale`` (152 keys)
have neither ``weight`` nor ``bias`` in their names, so SuperMerger keeps A's. Here they are merged with
their block like every other parameter of that block (a norm gain is a weight in all but name).
Bare transformer-only files (``double_blocks.0.…`` without ``model.diffusion_model.``) map identically.
"""
from __future__ import annotations

import re

from .common import FLUX_ROOTS, block_index, canonical, has_weight_or_bias

BLOCK_IDS = (("CLIP", "T5", "IN") + tuple(f"D{i:02d}" for i in range(19))
             + tuple(f"S{i:02d}" for i in range(38)) + ("OUT",))

_RE_DOUBLE = re.compile(r"(?:^|\.)double_blocks\.(\d+)\.")
_RE_SINGLE = re.compile(r"(?:^|\.)single_blocks\.(\d+)\.")
POSITION_IDS = ("text_encoders.clip_l.transformer.text_model.embeddings.position_ids",)


def canonical_key(key: str) -> str:
    return canonical(key, FLUX_ROOTS)


def is_vae(key: str) -> bool:
    return key.startswith(("vae.", "first_stage_model."))


def is_text_encoder(key: str) -> bool:
    return key.startswith(("text_encoders.", "conditioner.", "cond_stage_model."))


def block_of(key: str) -> str | None:
    """The 61-list block of ``key`` (see the module docstring), or None when it is never merged."""
    if is_vae(key):
        return None
    if not (has_weight_or_bias(key) or key.endswith(".scale")):
        return None
    if "t5xxl" in key:
        return "T5"
    if "text_encoders.clip" in key:
        return "CLIP"
    m = _RE_DOUBLE.search(key)
    if m:
        return block_index("D", int(m.group(1)), 19)
    m = _RE_SINGLE.search(key)
    if m:
        return block_index("S", int(m.group(1)), 38)
    if "_in" in key:
        return "IN"
    if "final_layer" in key:
        return "OUT"
    return None


def prune_keep(key: str) -> bool:
    """Keep the transformer, text encoders and VAE; drop anything else."""
    k = canonical_key(key)
    return k.startswith(("model.diffusion_model.", "text_encoders.", "vae.", "first_stage_model."))
