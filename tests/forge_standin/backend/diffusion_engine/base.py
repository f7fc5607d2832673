"""Stand-in of backend/diffusion_engine/base.py and the engines (sd15/sd20/sdxl/flux.py): plain
objects (not nn.Module) holding ForgeObjects (unet, clip, vae) three times (forge_objects,
forge_objects_original, forge_objects_after_applying_lora: shallow copies sharing the modules) and
the text engines (backend/text_processing)."""
from backend.patcher.clip import CLIP
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE
from backend.text_processing.classic_engine import ClassicTextProcessingEngine, T5TextProcessingEngine


class ForgeObjects:
    def __init__(self, unet, clip, vae, clipvision=None):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class ForgeDiffusionEngine:
    arch = None

    def __init__(self, unet, encoders, vae):
        clip = CLIP(model_dict=encoders)
        self.forge_objects = ForgeObjects(UnetPatcher.from_model(unet), clip, VAE(vae))
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.current_lora_hash = str([])
        self.text_engines = [T5TextProcessingEngine(m) if name == "t5xxl" else ClassicTextProcessingEngine(m)
                             for name, m in clip.cond_stage_model.items()]
        self.is_sd1, self.is_sd2, self.is_sdxl = (self.arch == a for a in ("sd1", "sd2", "sdxl"))

    def get_learned_conditioning(self, prompt):
        from backend import memory_management
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        for engine in self.text_engines:
            engine.encode_with_transformers()


ENGINES = {a: type(n, (ForgeDiffusionEngine,), {"arch": a})
           for a, n in (("sd1", "StableDiffusion"), ("sd2", "StableDiffusion2"), ("sdxl", "StableDiffusionXL"),
                        ("flux", "Flux"))}
