"""What the environment offers the session: the `Host` interface and the standalone host (a
models folder, no live model). The WebUI's host is merger/webui.py.

Names that arrive over the REST API or the UI resolve only to the host's model list or to files
inside its configured folders (merger/paths.py)."""
from __future__ import annotations

import contextlib
import os

from .errors import AlloyError
from .locate import Candidate, folder_candidates
from .paths import input_file, shown

MODEL_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class Host:
    """What the environment offers. Defaults describe an environment without a live model."""

    def list_models(self) -> list[str]: return []
    def refresh_models(self) -> None: pass
    def resolve_model(self, name: str) -> str: raise AlloyError(f"Unknown model {shown(name)}.")
    def models_dir(self) -> str: return os.getcwd()
    def live_model(self): return None     # a live_module.LiveModel or a torch.nn.Module
    def loaded_model_path(self) -> str | None: return None
    def load_model(self, path: str) -> None:
        raise AlloyError("No model is loaded to merge into; use a file merge instead.")
    def should_stop(self) -> bool: return False
    def job_begin(self, title: str) -> None: pass
    def job_progress(self, done: int, total: int, key: str) -> None: pass
    def job_end(self) -> None: pass
    def on_live_changed(self, recipe) -> None: pass
    def exclusive_job(self, title: str): return contextlib.nullcontext()

    def describe(self) -> str:
        """Where models are looked for, for messages ("the WebUI's checkpoint list")."""
        return f"the models folder {shown(self.models_dir())}"

    def model_candidates(self) -> list[Candidate]:
        """Every listed model with its path (and sha256 where the host knows it)."""
        out = []
        for name in self.list_models():
            try:
                out.append(Candidate(name, self.resolve_model(name)))
            except AlloyError:
                continue
        return out

    def vae_dirs(self) -> list[str]:
        """Folders a recipe's `bake_vae` may name a file in."""
        return [self.models_dir()]

    def resolve_vae(self, name: str) -> str:
        return input_file(self.vae_dirs(), name, what="VAE")

    def lora_dir(self) -> str:
        """Where the LoRA tools list LoRAs and write their outputs."""
        return self.models_dir()


class StandaloneHost(Host):
    """A models folder; no live model (the standalone app and the CLI)."""

    def __init__(self, models_dir: str, lora_dir: str | None = None):
        self._dir = os.path.abspath(models_dir)
        self._lora_dir = os.path.abspath(lora_dir) if lora_dir else self._dir

    def models_dir(self) -> str:
        return self._dir

    def lora_dir(self) -> str:
        return self._lora_dir

    def list_models(self) -> list[str]:
        names = [c.name for c in folder_candidates(self._dir) if c.name.lower().endswith(MODEL_EXTS)]
        return sorted(names, key=str.casefold)

    def model_candidates(self) -> list[Candidate]:
        return [c for c in folder_candidates(self._dir) if c.name.lower().endswith(MODEL_EXTS)]

    def resolve_model(self, name: str) -> str:
        """A name inside the models folder (or an absolute path in it), or a unique file stem."""
        if not name:
            raise AlloyError("No model was named.")
        try:
            return input_file([self._dir], name, what="model", exts=MODEL_EXTS)
        except AlloyError as e:
            problem = e
        stem = os.path.splitext(os.path.basename(str(name).split(" [")[0]))[0]
        hits = [m for m in self.list_models() if os.path.splitext(os.path.basename(m))[0] == stem]
        if len(hits) == 1:
            return os.path.join(self._dir, hits[0])
        raise problem


def same_file(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)
