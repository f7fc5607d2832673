"""LoRA tools: read kohya/LyCORIS files, map modules to checkpoint keys (SD1, SD2, SDXL, Flux),
bake into checkpoints with block weights, merge (concat / SVD), extract from two checkpoints,
resize (fixed or dynamic rank). The operations live in their own modules; `api` exposes them as
request functions and `cli` as `python -m merger lora …`."""
from merger.lora.blocks import BUILTIN_PRESETS, LoraSpec, parse_presets, parse_spec
from merger.lora.common import LoraResult
from merger.lora.formats import LoraFile, LoraModule, load_lora
from merger.lora.keymap import Target, build_index, checkpoint_target, kohya_names, lora_arch

__all__ = ["BUILTIN_PRESETS", "LoraSpec", "parse_presets", "parse_spec", "LoraResult", "LoraFile",
           "LoraModule", "load_lora", "Target", "build_index", "checkpoint_target", "kohya_names", "lora_arch"]
