"""noisefast: diffusion noise selection and optimization by inversion stability.

    import noisefast as nf
    engine = nf.Engine.from_pretrained("builtin:digits")      # or nf.Engine.from_config(nf.EngineConfig(...)), .from_pipe(pipe)
    sel = engine.select("a handwritten digit seven", seeds=range(100))

Layers (data flows one way): cli/serve/screen → workflows → pipeline (Engine) → selection/batching/optimize →
stability → transform → (denoisers, ops, schedule). See DESIGN.md for the math and the layout.

``__all__`` is what a user calls; everything else stays importable from its module (``noisefast.batching.RowScorer``,
``noisefast.ops``, ...). Names load on first use (PEP 562), so ``import noisefast`` — and ``noisefast --help`` —
do not import torch or diffusers.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.2.0"

_EXPORTS = {  # public name → the module that defines it
    # the engine, its configuration, settings and results
    "Engine": "noisefast.pipeline",
    "EngineConfig": "noisefast.config",
    "FastPathOptions": "noisefast.config",
    "Settings": "noisefast.settings",
    "Selection": "noisefast.selection",
    "Generation": "noisefast.engine_results",
    "Optimization": "noisefast.engine_results",
    "OptimizeResult": "noisefast.optimize",
    # the algorithms and their inputs (the lower-level API)
    "Condition": "noisefast.denoisers.base",
    "DDIMSchedule": "noisefast.schedule",
    "FlowSchedule": "noisefast.flow_schedule",  # SD3 / FLUX: flow-matching Euler moves
    "UNetDenoiser": "noisefast.denoisers.unet",
    "SD3Denoiser": "noisefast.denoisers.flow",
    "FluxDenoiser": "noisefast.denoisers.flow",
    "noise_from_seeds": "noisefast.seeds",
    "denoise": "noisefast.transform",
    "invert": "noisefast.transform",
    "transform": "noisefast.transform",
    "stability_score": "noisefast.stability",
    "select_noise": "noisefast.selection",
    "optimize_noise": "noisefast.optimize",
    "stability_grad": "noisefast.optimize",
    "describe_inversion_guidance": "noisefast.denoisers.guidance",
    # errors
    "NoisefastError": "noisefast.errors",
    "InputError": "noisefast.errors",
    "LimitError": "noisefast.errors",
    "ModelError": "noisefast.errors",
    "BackendUnavailableError": "noisefast.errors",
    "OutputError": "noisefast.errors",
    "Interrupted": "noisefast.errors",
    "ExtensionFallbackWarning": "noisefast._ext",
    # the build
    "build_info": "noisefast._ext",
}
_SUBMODULES = {"screen"}  # noisefast.screen(...) is callable: the screening job
# Top-level names of 0.1 that are internals now: still resolved (with a DeprecationWarning naming their module),
# not in __all__. Import them from their modules.
_MOVED = {
    "Denoiser": "noisefast.denoisers.base",
    "GaussianMixtureDenoiser": "noisefast.denoisers.gmm",
    "GraphUnavailable": "noisefast.graphs",
    "GraphedScorer": "noisefast.graphs",
    "Guidance": "noisefast.denoisers.guidance",
    "GuidedDenoiser": "noisefast.denoisers.guidance",
    "needs_negative": "noisefast.denoisers.guidance",
    "ModelDefaults": "noisefast.defaults",
    "Move": "noisefast.schedule",
    "OptimizeState": "noisefast.optimize",
    "SavedBytes": "noisefast.optimize",
    "RowScorer": "noisefast.batching",
    "ScoreJob": "noisefast.batching",
    "ScoredRows": "noisefast.batching",
    "score_stream": "noisefast.batching",
    "SelectionInterrupted": "noisefast.selection",
    "select_many": "noisefast.selection",
    "export_unet_onnx": "noisefast.denoisers.onnx_export",
    "make_denoiser": "noisefast.denoisers.backends",
    "prepare_unet": "noisefast.denoisers.fastpath",
}

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MOVED:
        import warnings

        warnings.warn(f"noisefast.{name} is internal since 0.2: import it from {_MOVED[name]}", DeprecationWarning,
                      stacklevel=2)  # fmt: skip
        return getattr(importlib.import_module(_MOVED[name]), name)
    else:
        try:  # a submodule (noisefast.ops, noisefast.screen, ...): importable as an attribute, like a plain package
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'noisefast' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The import system binds every imported submodule on its package; where a public function has its module's
    name (``noisefast.transform``: F = I∘D, in ``noisefast/transform.py``), the function keeps the name, as the
    eager ``from noisefast.transform import transform`` used to leave it."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType) and value.__name__ == _EXPORTS[name]:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
