"""Output-shaping helpers: prune (keep only model parts) and bake-in VAE overrides."""
from __future__ import annotations

from typing import Callable, Iterable

from merger.errors import AlloyError
from merger.paths import shown
from merger.io.source import Source, open_source

VAE_TARGET = "first_stage_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
VAE_DROP = ("loss.", "model_ema.")            # training-only parts of VAE .pt/.ckpt files
VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
DIFFUSERS_MARKERS = ("down_blocks.", "up_blocks.", "mid_block.")


def _keep_predicate(prune_keep) -> Callable[[str], bool]:
    """arch.prune_keep is either a predicate key -> bool or substrings a kept key contains."""
    if callable(prune_keep):
        return prune_keep
    if isinstance(prune_keep, str):
        prune_keep = (prune_keep,)
    parts = tuple(prune_keep)
    return lambda key: any(p in key for p in parts)


def prune_keys(keys: Iterable[str], arch) -> list[str]:
    """The keys a pruned output keeps, in the given order (spec §11: keys containing
    `diffusion_model.`, `first_stage_model.`, and `cond_stage_model.` (SD1/2) or
    `conditioner.` (SDXL); EMA, schedule buffers etc. are dropped). The rule is arch data."""
    keep = getattr(arch, "prune_keep", None)
    if keep is None:
        raise AlloyError(f"pruning is not defined for architecture {getattr(arch, 'name', arch)!r}")
    pred = _keep_predicate(keep)
    return [k for k in keys if pred(k)]


def vae_key_map(keys: Iterable[str]) -> dict[str, str]:
    """Map "first_stage_model.<k>" -> source key for a VAE's keys. Accepts bare LDM keys
    (encoder./decoder./quant_conv./post_quant_conv.), or keys under "first_stage_model." or
    "vae." (then only those are used, e.g. from a full checkpoint); drops loss./model_ema."""
    keys = list(keys)
    prefix = next((p for p in VAE_PREFIXES if any(k.startswith(p) for k in keys)), "")
    out: dict[str, str] = {}
    for k in keys:
        if not k.startswith(prefix):
            continue
        bare = k[len(prefix):]
        if bare.startswith(VAE_DROP):
            continue
        out[VAE_TARGET + bare] = k
    return out


def _check_vae(mapping: dict[str, str], label: str, path: str) -> None:
    bare = [k[len(VAE_TARGET):] for k in mapping]
    if any(m in k for k in bare for m in DIFFUSERS_MARKERS):
        raise AlloyError(
            f"{label} ({shown(path)}) is a diffusers-format VAE; use a single-file VAE "
            "(.safetensors/.pt with encoder./decoder. keys)"
        )
    if not any(k.startswith("encoder.") for k in bare) or not any(k.startswith("decoder.") for k in bare):
        raise AlloyError(f"{label} ({shown(path)}) is not a VAE (no encoder./decoder. weights found)")


def vae_overrides(vae_path: str, label: str = "VAE") -> dict[str, tuple[Source, str]]:
    """{"first_stage_model.<k>": (vae source, key in that source)} for baking a VAE into a
    checkpoint. The caller applies the entries whose target exists and closes the source
    (`next(iter(result.values()))[0].close()`, or keep it open until the output is written)."""
    src = open_source(vae_path, label)
    try:
        mapping = vae_key_map(src.keys())
        _check_vae(mapping, label, vae_path)
    except BaseException:
        src.close()
        raise
    return {target: (src, key) for target, key in mapping.items()}
