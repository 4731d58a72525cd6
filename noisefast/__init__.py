"""noisefast: diffusion noise selection and optimization by inversion stability.

Layers (data flows one way): cli/serve/screen → pipeline → stability/optimize → transform →
(denoisers, ops, schedule). See DESIGN.md for the math.
"""
from noisefast import ops, ref
from noisefast._ext import ExtensionFallbackWarning, build_info
from noisefast.denoisers import BackendUnavailableError, Condition, Denoiser, GaussianMixtureDenoiser, GuidedDenoiser, UNetDenoiser, make_denoiser
from noisefast.denoisers.guidance import Guidance, describe_inversion_guidance, needs_negative
from noisefast.denoisers.onnx_export import export_unet_onnx
from noisefast.loading import ModelDefaults, NoisefastError
from noisefast.optimize import OptimizeResult, OptimizeState, SavedBytes, optimize_noise, stability_grad
from noisefast.pipeline import Engine, Generation, Optimization, Settings
from noisefast.schedule import DDIMSchedule, Move
from noisefast.seeds import noise_from_seeds
from noisefast.stability import Selection, SelectionInterrupted, select_noise, stability_score
from noisefast.transform import denoise, invert, transform

__version__ = "0.1.0"
__all__ = [
    "BackendUnavailableError",
    "Condition",
    "DDIMSchedule",
    "Denoiser",
    "Engine",
    "ExtensionFallbackWarning",
    "GaussianMixtureDenoiser",
    "Generation",
    "Guidance",
    "GuidedDenoiser",
    "ModelDefaults",
    "Move",
    "NoisefastError",
    "Optimization",
    "OptimizeResult",
    "OptimizeState",
    "SavedBytes",
    "Selection",
    "SelectionInterrupted",
    "Settings",
    "UNetDenoiser",
    "build_info",
    "denoise",
    "describe_inversion_guidance",
    "export_unet_onnx",
    "invert",
    "make_denoiser",
    "needs_negative",
    "noise_from_seeds",
    "optimize_noise",
    "ops",
    "ref",
    "select_noise",
    "stability_grad",
    "stability_score",
    "transform",
]
