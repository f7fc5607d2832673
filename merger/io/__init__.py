"""File I/O: model sources (safetensors via pread, .ckpt via the weights-only loader), the
atomic streaming safetensors writer, hashing, and prune / bake-VAE helpers."""
from merger.io.dtypes import parse_dtype_name, torch_dtype_name
from merger.io.hashing import HashCache, legacy_hash, sha256_file, short_hash
from merger.io.header import TensorInfo
from merger.io.prune import prune_keys, vae_overrides
from merger.io.source import MemorySource, SafetensorsSource, Source, open_source
from merger.io.writer import SafetensorsWriter, save_state_dict

__all__ = [
    "TensorInfo", "Source", "SafetensorsSource", "MemorySource", "open_source",
    "SafetensorsWriter", "save_state_dict", "sha256_file", "legacy_hash", "short_hash",
    "HashCache", "prune_keys", "vae_overrides", "torch_dtype_name", "parse_dtype_name",
]
