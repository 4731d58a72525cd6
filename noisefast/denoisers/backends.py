"""`make_denoiser`: one entry point for every forward backend, all behind the `Denoiser` interface.

=============  ===========================================  ==========================================
backend        runs                                         takes
=============  ===========================================  ==========================================
auto           the fastest of the others, per call shape    a UNet module, or a model folder / hub id
               (measured, cached: `noisefast.denoisers.auto`)
torch          the diffusers UNet, eager (autograd)         the same
compile        ``torch.compile`` of it                      the same
onnxruntime    ONNX Runtime (CUDA EP or CPU)                an export (folder / .onnx), or the above
tensorrt       a cached TensorRT engine (CUDA)              the same
=============  ===========================================  ==========================================

Every backend built from a model carries gradients: the forward-only ones (compile, onnxruntime, tensorrt,
auto) send a call whose inputs require grad to the eager UNet (their ``autograd``), and noise optimization
runs each checkpointed step's forward on them and its backward in torch (`noisefast.transform`).

For ``onnxruntime``/``tensorrt`` given a model instead of an export, the UNet is exported into
``export_dir``, else into the cache (``cache_dir``, `noisefast.denoisers.onnx_cache`: once per model and
options, reused by every later process). ``export_options`` go to `export_unet_onnx`; the defaults there
(fp32, dynamic batch and prompt length) are changed to the UNet's dtype and dynamic height/width for
onnxruntime, and to fp16 for tensorrt (whose engine is built for one latent size: the config's
``sample_size`` unless ``export_options["latent_size"]``).
"""

from __future__ import annotations

import torch

from noisefast.config import BACKENDS
from noisefast.denoisers.base import Denoiser
from noisefast.denoisers.exported import _is_onnx, exported_denoiser
from noisefast.errors import BackendUnavailableError  # noqa: F401  (re-exported: callers catch it from here)


def make_denoiser(unet_or_path, backend: str = "torch", *, export_dir=None, export_options: dict | None = None,
                  cache_dir=None, **options) -> Denoiser:
    """A `Denoiser` for ``unet_or_path`` on ``backend``; ``options`` go to the backend's constructor.

    auto: `AutoDenoiser(unet, threads=, candidates=)`.
    torch: `UNetDenoiser(unet)`; ``dtype``/``device`` options apply when loading from a path.
    compile: `CompiledDenoiser(unet, mode=, dynamic=, fullgraph=, compile_backend=, options=)`.
    onnxruntime: `OnnxRuntimeDenoiser(path, providers=, device_id=, num_threads=, session_options=)`.
    tensorrt: `TensorRTDenoiser(path, profiles=, latent_size=, workspace_bytes=, cuda_graph=, ...)`.
    ``cache_dir``: the noisefast cache folder (exports, engines, inductor's cache, auto's decisions; default
    `noisefast.denoisers.cache.cache_dir`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")

    if backend in ("auto", "torch", "compile"):
        if _is_onnx(unet_or_path):
            raise TypeError(f"backend {backend!r} runs the diffusers UNet, not an ONNX export ({unet_or_path}); "
                            "use backend='onnxruntime' or 'tensorrt' for it")
        if not isinstance(unet_or_path, torch.nn.Module):
            from noisefast.denoisers.onnx_export import load_unet

            unet_or_path = load_unet(unet_or_path, dtype=options.pop("dtype", None), device=options.pop("device", None))
        if backend == "torch":
            from noisefast.denoisers.unet import UNetDenoiser

            return UNetDenoiser(unet_or_path, **options)
        if backend == "auto":
            from noisefast.denoisers.auto import AutoDenoiser

            return AutoDenoiser(unet_or_path, cache_dir=cache_dir, **options)
        from noisefast.denoisers.compiled import CompiledDenoiser

        return CompiledDenoiser(unet_or_path, cache_dir=cache_dir, **options)

    return exported_denoiser(unet_or_path, backend, export_dir=export_dir, export_options=export_options,
                             cache_dir=cache_dir, **options)
