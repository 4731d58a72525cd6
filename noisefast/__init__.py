"""noisefast: diffusion noise selection and optimization by inversion stability.

Layers (data flows one way): cli/serve/screen → workflows → pipeline (Engine) → selection/batching/optimize →
stability → transform → (denoisers, ops, schedule). See DESIGN.md for the math and the layout.
"""
from noisefast import ops, ref, screen  # screen: the module is callable, noisefast.screen(...)
from noisefast._ext import ExtensionFallbackWarning, build_info
from noisefast.batching import RowScorer, ScoredRows, ScoreJob, score_stream
from noisefast.defaults import ModelDefaults
from noisefast.denoisers import Condition, Denoiser, GaussianMixtureDenoiser, GuidedDenoiser, UNetDenoiser, make_denoiser
from noisefast.denoisers.flow import FluxDenoiser, SD3Denoiser
from noisefast.denoisers.fastpath import FastPathOptions, prepare_unet
from noisefast.denoisers.guidance import Guidance, describe_inversion_guidance, needs_negative
from noisefast.denoisers.onnx_export import export_unet_onnx
from noisefast.engine_results import Generation, Optimization
from noisefast.graphs import GraphedScorer, GraphUnavailable
from noisefast.errors import BackendUnavailableError, InputError, LimitError, ModelError, NoisefastError, OutputError
from noisefast.optimize import OptimizeResult, OptimizeState, SavedBytes, optimize_noise, stability_grad
from noisefast.pipeline import Engine
from noisefast.flow_schedule import FlowMove, FlowSchedule
from noisefast.schedule import DDIMSchedule, Move
from noisefast.seeds import noise_from_seeds
from noisefast.selection import Selection, SelectionInterrupted, select_many, select_noise
from noisefast.settings import Settings
from noisefast.stability import stability_score
from noisefast.transform import denoise, invert, transform

__version__ = "0.1.0"
__all__ = [
    "BackendUnavailableError",
    "Condition",
    "DDIMSchedule",
    "Denoiser",
    "Engine",
    "ExtensionFallbackWarning",
    "FastPathOptions",
    "FlowMove",
    "FlowSchedule",
    "FluxDenoiser",
    "GaussianMixtureDenoiser",
    "Generation",
    "GraphUnavailable",
    "GraphedScorer",
    "Guidance",
    "GuidedDenoiser",
    "InputError",
    "LimitError",
    "ModelDefaults",
    "ModelError",
    "Move",
    "NoisefastError",
    "Optimization",
    "OptimizeResult",
    "OptimizeState",
    "OutputError",
    "RowScorer",
    "ScoreJob",
    "ScoredRows",
    "SavedBytes",
    "SD3Denoiser",
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
    "prepare_unet",
    "ops",
    "ref",
    "select_many",
    "select_noise",
    "score_stream",
    "screen",
    "stability_grad",
    "stability_score",
    "transform",
]
