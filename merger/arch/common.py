"""Helpers shared by the architecture families (pure functions over key names)."""
from __future__ import annotations

UNET_PREFIX = "model.diffusion_model."

#: Top-level module names of an SD/SDXL UNet; a key starting with one of these is a bare UNet key.
SD_UNET_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "out.", "time_embed.", "label_emb.")
#: Top-level module names of the Flux transformer (bare transformer-only files use them unprefixed).
FLUX_ROOTS = ("double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.", "vector_in.",
              "guidance_in.", "final_layer.")


def canonical(key: str, roots: tuple[str, ...]) -> str:
    """Prefix a bare diffusion-model key with ``model.diffusion_model.``; other keys are unchanged."""
    return UNET_PREFIX + key if key.startswith(roots) else key


def has_weight_or_bias(key: str) -> bool:
    """SuperMerger's "mergeable parameter" test: the name contains ``weight`` or ``bias``."""
    return "weight" in key or "bias" in key


def block_index(prefix: str, n: int, limit: int) -> str | None:
    """``IN`` + two-digit index when ``n < limit`` (else None: a block this family does not have)."""
    return f"{prefix}{n:02d}" if 0 <= n < limit else None
