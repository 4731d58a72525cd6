"""Denoisers: the protocol, CFG batching, the diffusers UNet and SD3/FLUX transformer adapters, analytic and
compiled backends."""
from noisefast.denoisers.backends import BACKENDS, make_denoiser
from noisefast.errors import BackendUnavailableError
from noisefast.denoisers.base import Condition, Denoiser
from noisefast.denoisers.flow import FluxDenoiser, SD3Denoiser
from noisefast.denoisers.gmm import GaussianMixtureDenoiser
from noisefast.denoisers.guidance import (Guidance, GuidedDenoiser, describe_inversion_guidance,
                                         do_classifier_free_guidance, needs_negative)
from noisefast.denoisers.unet import UNetDenoiser

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "make_denoiser",
    "Condition", "Denoiser", "FluxDenoiser", "GaussianMixtureDenoiser", "SD3Denoiser", "GuidedDenoiser", "UNetDenoiser", "do_classifier_free_guidance",
    "Guidance", "describe_inversion_guidance", "needs_negative"]
