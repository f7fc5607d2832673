"""Stand-in of backend/patcher/unet.py and backend/modules/k_model.py: UnetPatcher over a KModel
holding the diffusion model and a predictor with its own sigma buffer (not from the file)."""
import torch

from backend import memory_management
from backend.patcher.base import ModelPatcher


class Predictor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("sigmas", torch.linspace(0.03, 14.6, 10))


class KModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.storage_dtype = model.storage_dtype
        self.diffusion_model = model
        self.predictor = Predictor()


class UnetPatcher(ModelPatcher):
    @classmethod
    def from_model(cls, model):
        return UnetPatcher(KModel(model), memory_management.cpu, memory_management.cpu)
