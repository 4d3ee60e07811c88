"""Lego Studio: teach Stable Diffusion concepts that are not objects (Lego, ECCV 2024)."""

__version__ = "0.1.0"
