"""Alloy's user settings: one typed dataclass with defaults, plus the table the WebUI adapter
turns into Settings → Alloy options (data, not code)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from .errors import AlloyError

COMPUTE_DEVICES = ("auto", "cpu", "cuda")
SAVE_DTYPES = ("fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_e5m2")


@dataclass
class Settings:
    """cache_gb: RAM (and VRAM) budget of the source cache in GiB (0 = no cache).
    compute_device: where merges are computed ("auto" = the GPU when there is one).
    save_dtype: default precision of saved files.
    restore_after_xyz: put the original model back after an X/Y/Z grid that merged.
    cache_on_gpu: keep cached source tensors on the GPU while free VRAM allows.
    history_max: how many recent merges history keeps."""

    cache_gb: float = 4.0
    compute_device: str = "auto"
    save_dtype: str = "fp16"
    restore_after_xyz: bool = True
    cache_on_gpu: bool = False
    history_max: int = 100

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        try:
            self.cache_gb = float(self.cache_gb)
            self.history_max = int(self.history_max)
        except (TypeError, ValueError):
            raise AlloyError("The Alloy cache size and history length must be numbers.") from None
        if self.cache_gb < 0:
            raise AlloyError(f"The Alloy cache size must be 0 GB or more, not {self.cache_gb}.")
        if self.compute_device not in COMPUTE_DEVICES:
            raise AlloyError(f"Unknown compute device '{self.compute_device}'; choose one of: "
                             f"{', '.join(COMPUTE_DEVICES)}.")
        if self.save_dtype not in SAVE_DTYPES:
            raise AlloyError(f"Unknown save precision '{self.save_dtype}'; choose one of: "
                             f"{', '.join(SAVE_DTYPES)}.")
        self.restore_after_xyz = bool(self.restore_after_xyz)
        self.cache_on_gpu = bool(self.cache_on_gpu)

    @property
    def cache_bytes(self) -> int:
        """cache_gb × 2**30."""
        return int(self.cache_gb * (1 << 30))

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


class OptionSpec(NamedTuple):
    """One WebUI option: `alloy_<field>` in shared.opts."""

    field: str
    label: str
    component: str              # "slider" | "radio" | "checkbox" | "number"
    args: dict


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("cache_gb", "Source cache size (GB of RAM; 0 disables the cache)", "slider",
               {"minimum": 0, "maximum": 64, "step": 0.5}),
    OptionSpec("cache_on_gpu", "Also keep cached source tensors on the GPU while VRAM allows", "checkbox", {}),
    OptionSpec("compute_device", "Compute device for merges", "radio", {"choices": list(COMPUTE_DEVICES)}),
    OptionSpec("save_dtype", "Default precision of saved checkpoints", "radio", {"choices": list(SAVE_DTYPES)}),
    OptionSpec("restore_after_xyz", "Restore the original model after an X/Y/Z grid that merged", "checkbox", {}),
    OptionSpec("history_max", "Number of recent merges kept in history", "number", {"precision": 0}),
)

OPTION_PREFIX = "alloy_"


def option_key(field: str) -> str:
    return OPTION_PREFIX + field


def from_getter(get: Callable[[str, Any], Any]) -> Settings:
    """Settings from `get(option_key, default)` (e.g. a wrapper of shared.opts); a bad stored
    value falls back to the default for that field."""
    defaults = Settings()
    values = {}
    for spec in OPTIONS:
        default = getattr(defaults, spec.field)
        value = get(option_key(spec.field), default)
        try:
            Settings(**{spec.field: value})
        except AlloyError:
            value = default
        values[spec.field] = value
    return Settings(**values)
