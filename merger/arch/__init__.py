"""Model architectures: block tables and key → block mapping (spec §2, §5.1, §5.3, §10.4, §11, §20.1).

An :class:`Arch` is immutable data plus a few pure functions of a key name. ``detect`` decides the
architecture from key names alone (tensor shapes are only consulted, when given, to tell a UNet-only
SD2 file from an SD1 one).

Key prefixes: every family is described with its full single-file key names
(``model.diffusion_model.…``). Bare UNet/transformer keys (``input_blocks.…``, ``double_blocks.…``) are
accepted too: ``block_of`` and friends map them as if prefixed, and :func:`key_prefix` tells the caller
which spelling a particular file uses (``unet_prefix`` or ``""``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from ..errors import AlloyError
from . import flux as _flux
from . import sd as _sd
from . import sdxl as _sdxl
from .common import FLUX_ROOTS, SD_UNET_ROOTS, UNET_PREFIX


def _never(key: str) -> bool:
    return False


@dataclass(frozen=True, eq=False)
class Arch:
    """One architecture family. Equality and hashing are by ``name``."""

    name: str                                   # "sd1" | "sd2" | "sdxl" | "flux"
    label: str                                  # "SD1.x", "SD2.x", "SDXL", "Flux"
    block_ids: tuple[str, ...]                  # block_ids[0] is the base slot (BASE / CLIP)
    unet_prefix: str
    adjust_keys: Mapping[str, str]              # role -> full key (Flux: empty)
    position_ids_keys: tuple[str, ...]
    _block_of: Callable[[str], "str | None"] = field(repr=False)
    _is_vae: Callable[[str], bool] = field(repr=False)
    _is_text_encoder: Callable[[str], bool] = field(repr=False)
    _prune_keep: Callable[[str], bool] = field(repr=False)
    _canonical: Callable[[str], str] = field(repr=False)
    _is_alias: Callable[[str], bool] = field(repr=False, default=_never)

    def __eq__(self, other) -> bool:
        return isinstance(other, Arch) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"Arch({self.name!r})"

    @property
    def base_block(self) -> str:
        return self.block_ids[0]

    def block_of(self, key: str) -> str | None:
        """Block ID of ``key``; None = never merged (A's tensor is kept)."""
        return self._block_of(key)

    def block_index(self, block: str) -> int:
        """Index of ``block`` in ``block_ids`` (AlloyError when this family has no such block)."""
        try:
            return self.block_ids.index(block)
        except ValueError:
            raise AlloyError(f"{self.label} has no block '{block}'.") from None

    def is_vae(self, key: str) -> bool:
        return self._is_vae(key)

    def is_text_encoder(self, key: str) -> bool:
        return self._is_text_encoder(key)

    def prune_keep(self, key: str) -> bool:
        """§11 prune rule: True when ``key`` survives pruning (SDXL drops ``cond_stage_model.*`` aliases)."""
        return self._prune_keep(key)

    def is_alias(self, key: str) -> bool:
        """True for keys that duplicate other keys and are always dropped on save (SDXL ``cond_stage_model.*``)."""
        return self._is_alias(key)

    def canonical_key(self, key: str) -> str:
        """``key`` with ``unet_prefix`` added when it is a bare UNet/transformer key."""
        return self._canonical(key)

    def adjust_role(self, key: str) -> str | None:
        """Role ("in_w", …, "out2_b") when ``key`` is one of the six Adjust tensors, else None."""
        k = self.canonical_key(key)
        for role, full in self.adjust_keys.items():
            if k == full:
                return role
        return None


def _make_sd(name: str, label: str, position_ids: tuple[str, ...]) -> Arch:
    return Arch(name, label, _sd.BLOCK_IDS, UNET_PREFIX, MappingProxyType(dict(_sd.ADJUST_KEYS)), position_ids,
                _sd.block_of, _sd.is_vae, _sd.is_text_encoder, _sd.prune_keep, _sd.canonical_key)


SD1 = _make_sd("sd1", "SD1.x", _sd.SD1_POSITION_IDS)
SD2 = _make_sd("sd2", "SD2.x", _sd.SD2_POSITION_IDS)
SDXL = Arch("sdxl", "SDXL", _sdxl.BLOCK_IDS, UNET_PREFIX, MappingProxyType(dict(_sdxl.ADJUST_KEYS)),
            _sdxl.POSITION_IDS, _sdxl.block_of, _sdxl.is_vae, _sdxl.is_text_encoder, _sdxl.prune_keep,
            _sdxl.canonical_key, _sdxl.is_alias)
FLUX = Arch("flux", "Flux", _flux.BLOCK_IDS, UNET_PREFIX, MappingProxyType({}), _flux.POSITION_IDS,
            _flux.block_of, _flux.is_vae, _flux.is_text_encoder, _flux.prune_keep, _flux.canonical_key)

ARCHS: Mapping[str, Arch] = MappingProxyType({a.name: a for a in (SD1, SD2, SDXL, FLUX)})


def get_arch(name: str) -> Arch:
    """The architecture called ``name`` ("sd1", "sd2", "sdxl", "flux"; also "SD1.x", "SDXL", …)."""
    key = str(name).strip().lower().replace(".x", "").replace(" ", "")
    arch = ARCHS.get(key)
    if arch is None:
        raise AlloyError(f"Unknown architecture '{name}'; choose one of: {', '.join(ARCHS)}.")
    return arch


_RE_INPUT_N = re.compile(r"(?:^|\.)input_blocks\.(\d+)\.")


def _starts(keys: list[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _contains(keys: list[str], part: str) -> bool:
    return any(part in k for k in keys)


def _unet_only(keys: list[str], label: str, shapes: Mapping[str, tuple] | None) -> Arch | None:
    """SD1/SD2/SDXL UNet without text encoder: judged by the input-block count and ``label_emb``."""
    unet = [k[len(UNET_PREFIX):] if k.startswith(UNET_PREFIX) else k for k in keys]
    unet = [k for k in unet if k.startswith(SD_UNET_ROOTS)]
    blocks = [int(m.group(1)) for k in unet for m in [_RE_INPUT_N.search(k)] if m]
    if not blocks:
        return None
    has_label = any(k.startswith("label_emb.") for k in unet)
    if has_label and max(blocks) <= 8:
        return SDXL
    if has_label:
        raise _refiner(label)
    if shapes:
        for k, shape in shapes.items():
            if k.endswith("attn2.to_k.weight") and len(shape) == 2:
                return SD2 if int(shape[1]) == 1024 else SD1
    return SD1


def _refiner(label: str) -> AlloyError:
    return AlloyError(f"{label} is an SDXL refiner (OpenCLIP-G text encoder only); "
                      "Alloy merges SDXL base models, not refiners.")


def detect(keys: Iterable[str], label: str = "model", shapes: Mapping[str, tuple] | None = None) -> Arch:
    """Architecture of a file from its key names (AlloyError naming ``label`` when unsupported).

    Rules, in order: SD3 (``joint_blocks``) → refused; Flux (``double_blocks.`` / ``single_blocks.``,
    prefixed or bare); SDXL base (``conditioner.embedders.0.transformer.`` CLIP-L with embedders.1 OpenCLIP-G),
    refiner (``conditioner.embedders.0.model.`` only) → refused; SD2 (``cond_stage_model.model.`` OpenCLIP-H);
    SD1 (``cond_stage_model.transformer.`` CLIP-L); UNet-only files by input-block count and ``label_emb``
    (SD1 vs SD2 by the cross-attention context width in ``shapes`` when given, else SD1).
    """
    keys = list(keys)
    if _contains(keys, "joint_blocks."):
        raise AlloyError(f"{label} is a Stable Diffusion 3 model, which Alloy cannot merge "
                         "(supported: SD1.x, SD2.x, SDXL, Flux).")
    if _contains(keys, "double_blocks.") or _starts(keys, *FLUX_ROOTS[:2]):
        return FLUX
    if _starts(keys, "conditioner.embedders."):
        if _starts(keys, "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."):
            return SDXL
        if _starts(keys, "conditioner.embedders.0.model."):
            raise _refiner(label)
    if _starts(keys, "cond_stage_model.model."):
        return SD2
    if _starts(keys, "cond_stage_model.transformer."):
        return SD1
    arch = _unet_only(keys, label, shapes)
    if arch is not None:
        return arch
    raise AlloyError(f"{label} has an unrecognised layout (no SD1.x, SD2.x, SDXL or Flux model keys found).")


def key_prefix(keys: Iterable[str], arch: Arch) -> str:
    """``arch.unet_prefix`` when the file spells its diffusion-model keys with it, ``""`` for bare files."""
    roots = FLUX_ROOTS if arch.name == "flux" else SD_UNET_ROOTS
    keys = list(keys)
    if any(k.startswith(arch.unet_prefix) for k in keys):
        return arch.unet_prefix
    return "" if any(k.startswith(roots) for k in keys) else arch.unet_prefix


def check_same_arch(named: dict[str, Arch]) -> None:
    """AlloyError naming two inputs when ``named`` ({label: arch}) holds different architectures."""
    items = list(named.items())
    for label, arch in items[1:]:
        first_label, first = items[0]
        if arch != first:
            raise AlloyError(f"{first_label} is {first.label} but {label} is {arch.label}; "
                             "models of different architectures cannot be merged.")


def sdxl_26_to_20(values: list[float]) -> list[float]:
    """§2 step 2: SD 26-list → SDXL 20-list = BASE + IN00…IN08 + M00 + OUT00…OUT08 (drops IN09–11, OUT09–11)."""
    values = list(values)
    if len(values) != 26:
        raise AlloyError(f"Cannot convert a {len(values)}-value block list to SDXL; 26 values are needed.")
    return values[0:10] + values[13:23]


__all__ = ["Arch", "ARCHS", "SD1", "SD2", "SDXL", "FLUX", "detect", "get_arch", "check_same_arch",
           "sdxl_26_to_20", "key_prefix"]
