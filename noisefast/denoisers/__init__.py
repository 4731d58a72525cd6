"""Denoisers: the protocol, CFG batching, the diffusers UNet adapter, analytic and compiled backends."""
from noisefast.denoisers.base import Condition, Denoiser

__all__ = ["Condition", "Denoiser"]
