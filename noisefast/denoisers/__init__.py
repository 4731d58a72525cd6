"""Denoisers: the protocol, CFG batching, the diffusers UNet adapter, analytic and compiled backends."""
from noisefast.denoisers.backends import BACKENDS, make_denoiser
from noisefast.errors import BackendUnavailableError
from noisefast.denoisers.base import Condition, Denoiser
from noisefast.denoisers.gmm import GaussianMixtureDenoiser
from noisefast.denoisers.guidance import (Guidance, GuidedDenoiser, describe_inversion_guidance,
                                         do_classifier_free_guidance, needs_negative)
from noisefast.denoisers.unet import UNetDenoiser

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "make_denoiser",
    "Condition", "Denoiser", "GaussianMixtureDenoiser", "GuidedDenoiser", "UNetDenoiser", "do_classifier_free_guidance",
    "Guidance", "describe_inversion_guidance", "needs_negative"]
