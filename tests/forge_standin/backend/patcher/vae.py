"""Stand-in of backend/patcher/vae.py: the VAE object holding `first_stage_model` and its patcher."""
from backend.patcher.base import make


class VAE:
    def __init__(self, model):
        self.first_stage_model = model
        self.patcher = make(model)
        self.latent_channels = 4
