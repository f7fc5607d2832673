"""The plan: for every output key, what to do (merge with which ratios, keep A, copy B, …).

`build_plan` does all validation that needs only file headers (architectures, shapes, block lists,
names, ranges) so that a bad recipe is refused before the first tensor is read."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch

from .adjust import parse_adjust, validate_adjust
from .arch import Arch, check_same_arch, detect
from .errors import AlloyError
from .io import open_source, vae_overrides
from .methods import Method, get_method
from .multimodes import multi_mode, tuned_slots, used_weights
from .paths import shown
from .presets import Presets
from .recipe import Recipe
from .weights import RatioResolver

OUT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# fp8 saves: the UNet's float weights in fp8 (round to nearest from the compute-dtype result), the
# text encoders, the VAE and every other float weight of the model in fp16.
FP8_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
COMPUTE = {"fp32": torch.float32, "fp64": torch.float64}
# Channel counts of special first convs (§10.5): inpainting has 9 input channels, instruct-pix2pix 8.
SPECIAL_IN_CHANNELS = {9: "inpainting", 8: "instruct-pix2pix"}
SLOTS = ("a", "b", "c", "d", "e", "f")


@dataclass
class KeyPlan:
    """How one output key is produced.

    action: "merge" (method on A, B, C), "keep_a", "copy_b", "vae" (from the bake-VAE file),
    "clip_ids" (repaired CLIP position ids)."""

    key: str
    action: str
    shape: tuple
    out_dtype: torch.dtype
    block: str | None = None
    alpha: float = 0.0
    beta: float = 0.0
    channels: int | None = None  # merge only the first N channels of dim 1 (§10.5)
    adjust: bool = False
    src_key: str | None = None  # the key inside the source (vae)


@dataclass
class Plan:
    recipe: Recipe
    arch: Arch
    method: Method
    items: list[KeyPlan]
    compute_dtype: torch.dtype
    adjust: tuple | None = None
    vae: dict = field(default_factory=dict)  # out key -> (Source, key)
    notes: list[str] = field(default_factory=list)
    slots: tuple = ("a", "b")                 # the sources a merged key is computed from, A first

    def __post_init__(self):
        self._by_key = {kp.key: kp for kp in self.items}
        ident = self.recipe.identity()
        self._models = tuple(ident.get(f"model_{s}") for s in SLOTS)
        self.multi = multi_params(self.recipe)

    def derived_key(self, key: str) -> tuple:
        """What a multi-model kernel's alpha-independent step (`MultiKernel.prepare`) depends on
        for `key`: equal keys ⇒ equal intermediate tensors (the engine's derived cache)."""
        kp = self._by_key[key]
        return (self._models, self.recipe.mode, self.multi, key, kp.channels, self.recipe.compute_dtype)

    def __getitem__(self, key) -> KeyPlan:
        return self._by_key[key]

    def __contains__(self, key) -> bool:
        return key in self._by_key

    def signature(self, key: str, kp: KeyPlan | None = None) -> tuple:
        """Hashable description of how `key` is computed: equal signatures ⇒ equal tensors.
        `kp`: describe this KeyPlan of `key` instead of the plan's own (other ratios)."""
        kp = kp if kp is not None else self._by_key[key]
        r = self.recipe
        models = self._models
        if kp.action == "merge":
            return ("merge", models, r.mode, r.calc, kp.alpha, kp.beta, r.gamma, kp.channels,
                    self.adjust if kp.adjust else None, r.compute_dtype, kp.out_dtype, self.multi)
        if kp.action == "keep_a":
            return ("keep_a", models[0], kp.out_dtype)
        if kp.action == "copy_b":
            return ("copy_b", models[1], kp.out_dtype)
        if kp.action == "vae":
            return ("vae", r.bake_vae, kp.src_key, kp.out_dtype)
        return (kp.action, kp.out_dtype)

    def count(self, action: str) -> int:
        return sum(1 for kp in self.items if kp.action == action)


def multi_params(recipe: Recipe) -> tuple | None:
    """(weights, density, outliers, seed) of a multi-model recipe, None for a field its mode does not
    use (so a sweep over an unused field recomputes nothing); None for the SuperMerger modes."""
    spec = multi_mode(recipe.mode)
    if spec is None:
        return None
    return (used_weights(recipe) if "weights" in spec.uses else None,
            float(recipe.density) if "density" in spec.uses else None,
            float(recipe.outliers) if "outliers" in spec.uses else None,
            int(recipe.seed) if "seed" in spec.uses else None)


def merge_slots(recipe: Recipe, method: Method) -> tuple:
    """The models a merged key is computed from: A, B and C when the method needs it; A and the
    fine-tunes B…F for the multi-model modes."""
    if method.multi is not None:
        return ("a", *tuned_slots(recipe))
    return ("a", "b", "c") if method.needs_c else ("a", "b")


def source_paths(recipe: Recipe) -> dict:
    """{slot: path} of the models a recipe reads (`merge_slots`)."""
    method = get_method(recipe.mode, recipe.calc)
    if method.needs_c and not recipe.model_c:
        raise AlloyError(f"The {recipe.mode.replace('_', ' ')} mode ({recipe.calc}) needs a model C.")
    slots = merge_slots(recipe, method)
    return {s: getattr(recipe, f"model_{s}") for s in slots if getattr(recipe, f"model_{s}")}


def open_sources(recipe: Recipe) -> dict:
    """Open the models of `source_paths` from their headers."""
    sources = {}
    try:
        for slot, path in source_paths(recipe).items():
            sources[slot] = open_source(path, label=f"model {slot.upper()}")
    except BaseException:
        for s in sources.values():
            s.close()
        raise
    return sources


@lru_cache(maxsize=1 << 16)
def _block_of(arch: Arch, key: str) -> str | None:
    """arch.block_of(key), remembered: re-merges plan the same keys again."""
    return arch.block_of(key)


def _out_dtype(recipe: Recipe, dtype: torch.dtype, key: str, block: str | None, arch: Arch) -> torch.dtype:
    """Chosen precision for floating tensors of the model; other tensors keep their dtype.

    Keys that are neither mapped to a block nor part of the model (schedule buffers such as
    `alphas_cumprod`) keep their dtype, as SuperMerger's fp16 option does. fp8 applies to the
    UNet / transformer keys only; the rest of the model is stored in fp16."""
    if not dtype.is_floating_point or recipe.dtype == "keep":
        return dtype
    if block is None and "model" not in key:
        return dtype
    if recipe.dtype in FP8_DTYPES:
        unet = arch.canonical_key(key).startswith(arch.unet_prefix)
        return FP8_DTYPES[recipe.dtype] if unet else torch.float16
    return OUT_DTYPES[recipe.dtype]


def source_label(src) -> str:
    """"model B (/path/B.safetensors)": how messages name an input file."""
    return f"{src.label} ({shown(src.path)})"


def inputs_text(sources: dict) -> str:
    """"model A (/p/A.safetensors), model B (/p/B.safetensors)" for messages."""
    return ", ".join(source_label(src) for src in sources.values())


def fp8_input_notes(sources: dict) -> list[str]:
    """One note per input that stores fp8 tensors: they are read as float32 (upcast) for the merge."""
    fp8 = set(FP8_DTYPES.values())
    notes = []
    for src in sources.values():
        n = sum(1 for k in src.keys() if src.info(k).dtype in fp8)
        if n:
            notes.append(f"{source_label(src)} stores {n} tensors in fp8; they are read as float32 (upcast) "
                         "for the merge, and the precision fp8 lost is not recovered")
    return notes


def _shape_rule(key: str, shapes: dict, calc: str, label: dict) -> int | None:
    """Check A/B/C shapes of one key; return the channel count to merge for §10.5 keys, else None.
    `label` names each slot's file for the messages."""
    sa = shapes["a"]
    others = {s: sh for s, sh in shapes.items() if s != "a"}
    if all(sh == sa for sh in others.values()):
        return None
    for slot, sh in others.items():
        if len(sh) != len(sa) or len(sa) < 2 or any(x != y for i, (x, y) in enumerate(zip(sa, sh)) if i != 1):
            raise AlloyError(f"Shape mismatch at key {key}: {label['a']} has {tuple(sa)} but {label[slot]} has "
                             f"{tuple(sh)}.")
    small = min(sh[1] for sh in others.values())
    if sa[1] < max(sh[1] for sh in others.values()):
        big = max(others, key=lambda s: others[s][1])
        kind = SPECIAL_IN_CHANNELS.get(others[big][1], "special")
        raise AlloyError(f"Key {key} has {others[big][1]} input channels in {label[big]} but {sa[1]} in "
                         f"{label['a']}: the {kind} model must be model A.")
    if sa[1] not in SPECIAL_IN_CHANNELS or small != 4:
        raise AlloyError(f"Shape mismatch at key {key}: {label['a']} has {tuple(sa)}, "
                         f"{' and '.join(f'{label[s]} {tuple(sh)}' for s, sh in others.items())}.")
    if calc != "normal":
        raise AlloyError(f"Model A ({label['a']}) is an {SPECIAL_IN_CHANNELS[sa[1]]} model; only the normal "
                         f"calculation mode can merge its first layer ({key}).")
    return small


def build_plan(recipe: Recipe, sources: dict, *, presets: Presets | None = None) -> Plan:
    """Validate the recipe against the file headers and decide every output key."""
    recipe.validate()
    method = get_method(recipe.mode, recipe.calc)
    method.validate(recipe.alpha, recipe.beta, recipe.gamma)
    slots = merge_slots(recipe, method)
    missing = [s for s in slots if s not in sources]
    if missing:
        raise AlloyError(f"Model {missing[0].upper()} was not opened for this {recipe.mode} merge.")
    src_a, src_b = sources["a"], sources["b"]
    others = [sources[s] for s in slots[1:]]
    label = {slot: source_label(src) for slot, src in sources.items() if src is not None}
    archs = {label[slot]: detect(src.keys(), label=label[slot]) for slot, src in sources.items()
             if src is not None and slot in SLOTS}
    check_same_arch(archs)
    arch = next(iter(archs.values()))
    presets = presets if presets is not None else Presets()
    resolver = RatioResolver(recipe, arch, presets)
    adjust = parse_adjust(recipe.adjust)
    if adjust is not None:
        validate_adjust(adjust, arch)
    adjust_keys = set(arch.adjust_keys.values()) if adjust is not None else set()
    vae = vae_overrides(recipe.bake_vae) if recipe.bake_vae else {}
    compute = COMPUTE[recipe.compute_dtype]

    items: list[KeyPlan] = []
    validated = set()
    for key in src_a.keys():
        ia = src_a.info(key)
        mapped = _block_of(arch, key)
        block = mapped if ia.dtype.is_floating_point else None
        out = _out_dtype(recipe, ia.dtype, key, mapped, arch)
        kp = KeyPlan(key, "keep_a", tuple(ia.shape), out, block=block)
        items.append(kp)
        if block is None or not all(key in s for s in others):
            continue                                   # a key missing from any model keeps A
        if method.skips_vae and arch.is_vae(key):
            continue
        ratios = resolver.ratios(key, block)
        if ratios is None:
            continue
        infos = [s.info(key) for s in others]
        if not all(i.dtype.is_floating_point for i in infos):
            continue
        if any(i.shape != ia.shape for i in infos):
            kp.channels = _shape_rule(key, dict(zip(slots, (ia.shape, *(i.shape for i in infos)))), recipe.calc,
                                      label)
        kp.action, (kp.alpha, kp.beta) = "merge", ratios
        kp.adjust = key in adjust_keys
        if ratios not in validated:
            method.validate(kp.alpha, kp.beta, recipe.gamma)
            validated.add(ratios)

    in_a = {kp.key for kp in items}
    if not arch.name.startswith("flux"):
        for key in src_b.keys():
            if key in in_a or key.endswith("position_ids") or "model" not in key:
                continue
            ib = src_b.info(key)
            items.append(KeyPlan(key, "copy_b", tuple(ib.shape), _out_dtype(recipe, ib.dtype, key,
                                                                              _block_of(arch, key), arch)))
    if recipe.prune:
        items = [kp for kp in items if arch.prune_keep(kp.key)]
    by_key = {kp.key: kp for kp in items}
    for out_key, (vsrc, vkey) in vae.items():
        kp = by_key.get(out_key)
        if kp is None:
            continue
        vinfo = vsrc.info(vkey)
        if tuple(vinfo.shape) != kp.shape:
            raise AlloyError(f"The VAE {shown(recipe.bake_vae)} does not fit this model: {vkey} has shape "
                             f"{tuple(vinfo.shape)}, the model {kp.shape}.")
        kp.action, kp.src_key, kp.adjust, kp.channels = "vae", vkey, False, None
    if recipe.fix_clip_ids:
        for key in arch.position_ids_keys:
            if key in by_key:
                by_key[key].action = "clip_ids"
    notes = fp8_input_notes(sources)
    if not any(kp.action == "merge" for kp in items):
        notes.append("no key was merged: the models share no mergeable keys under these settings, "
                     "so the result is model A")
    if recipe.bake_vae and not any(kp.action == "vae" for kp in items):
        raise AlloyError(f"No key of the VAE {shown(recipe.bake_vae)} matches this {arch.label} model's VAE.")
    return Plan(recipe, arch, method, items, compute, adjust=adjust, vae=vae, notes=notes, slots=slots)
