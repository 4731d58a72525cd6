"""Denoisers: the protocol, CFG batching, the diffusers UNet and SD3/FLUX transformer adapters, analytic and
compiled backends.

Names load on first use (PEP 562), so a torch-free submodule (``onnx_args``: the export's ``--help``) imports
without torch.
"""

import importlib

_EXPORTS = {
    "BACKENDS": "noisefast.config",
    "make_denoiser": "noisefast.denoisers.backends",
    "BackendUnavailableError": "noisefast.errors",
    "Condition": "noisefast.denoisers.base",
    "Denoiser": "noisefast.denoisers.base",
    "GaussianMixtureDenoiser": "noisefast.denoisers.gmm",
    "Guidance": "noisefast.denoisers.guidance",
    "GuidedDenoiser": "noisefast.denoisers.guidance",
    "describe_inversion_guidance": "noisefast.denoisers.guidance",
    "do_classifier_free_guidance": "noisefast.denoisers.guidance",
    "needs_negative": "noisefast.denoisers.guidance",
    "UNetDenoiser": "noisefast.denoisers.unet",
    "SD3Denoiser": "noisefast.denoisers.flow",
    "FluxDenoiser": "noisefast.denoisers.flow",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
