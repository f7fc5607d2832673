"""Alloy: a model-merging engine for Stable Diffusion checkpoints and LoRAs.

The engine is WebUI-independent; `merger.webui` is the one adapter to AUTOMATIC1111's WebUI.
"""
__version__ = "0.1.0"
