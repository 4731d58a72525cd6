"""`make_denoiser`: one entry point for every forward backend, all behind the `Denoiser` interface.

=============  ======================================  ==========================================
backend        runs                                    takes
=============  ======================================  ==========================================
torch          the diffusers UNet, eager (autograd)    a UNet module, or a model folder / hub id
compile        ``torch.compile`` of it (autograd)      the same
onnxruntime    ONNX Runtime (CUDA EP or CPU)           an export (folder / .onnx), or the above
tensorrt       a cached TensorRT engine (CUDA)         the same
=============  ======================================  ==========================================

For ``onnxruntime``/``tensorrt`` given a model instead of an export, the UNet is exported first
into ``export_dir``, or into a temporary folder deleted once the session or engine has loaded it.
``export_options`` go to `export_unet_onnx`; the defaults there (fp32, dynamic batch and prompt
length) are changed to dynamic height/width for onnxruntime, and to fp16 for tensorrt (whose engine
is built for one latent size: the config's ``sample_size`` unless ``export_options["latent_size"]``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from noisefast.denoisers.base import Denoiser
from noisefast.config import BACKENDS
from noisefast.errors import BackendUnavailableError


def _is_onnx(ref) -> bool:
    if not isinstance(ref, (str, os.PathLike)):
        return False
    from noisefast.denoisers.onnx_io import MODEL_FILE

    p = Path(ref)
    return p.suffix == ".onnx" or (p / MODEL_FILE).is_file()


def make_denoiser(unet_or_path, backend: str = "torch", *, export_dir=None, export_options: dict | None = None,
                  **options) -> Denoiser:
    """A `Denoiser` for ``unet_or_path`` on ``backend``; ``options`` go to the backend's constructor.

    torch: `UNetDenoiser(unet)`; ``dtype``/``device`` options apply when loading from a path.
    compile: `CompiledDenoiser(unet, mode=, dynamic=, fullgraph=, compile_backend=, options=)`.
    onnxruntime: `OnnxRuntimeDenoiser(path, providers=, device_id=, num_threads=, session_options=)`.
    tensorrt: `TensorRTDenoiser(path, profiles=, latent_size=, cache_dir=, workspace_bytes=, cuda_graph=, ...)`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")

    if backend in ("torch", "compile"):
        if _is_onnx(unet_or_path):
            raise TypeError(f"backend {backend!r} runs the diffusers UNet, not an ONNX export ({unet_or_path}); "
                            "use backend='onnxruntime' or 'tensorrt' for it")
        if not isinstance(unet_or_path, torch.nn.Module):
            from noisefast.denoisers.onnx_export import load_unet

            unet_or_path = load_unet(unet_or_path, dtype=options.pop("dtype", None), device=options.pop("device", None))
        if backend == "torch":
            from noisefast.denoisers.unet import UNetDenoiser

            return UNetDenoiser(unet_or_path, **options)
        from noisefast.denoisers.compiled import CompiledDenoiser

        return CompiledDenoiser(unet_or_path, **options)

    if backend == "tensorrt":
        from noisefast.denoisers.trt import TensorRTDenoiser, require_tensorrt

        require_tensorrt()  # fail now, not after a minutes-long export
        cls, default_export = TensorRTDenoiser, {"dtype": torch.float16}
    else:
        from noisefast.denoisers.ort import OnnxRuntimeDenoiser, _import_onnxruntime

        _import_onnxruntime()
        cls, default_export = OnnxRuntimeDenoiser, {"dynamic_hw": True}  # any image size, at no cost to ORT
    if _is_onnx(unet_or_path):
        if export_dir is not None or export_options:
            raise ValueError("export_dir/export_options apply only when exporting a model, not to an existing export")
        return cls(unet_or_path, **options)

    from noisefast.denoisers.onnx_export import export_unet_onnx

    export_options = {**default_export, **(export_options or {})}
    if export_dir is not None:
        return cls(export_unet_onnx(unet_or_path, export_dir, **export_options), **options)
    with tempfile.TemporaryDirectory(prefix="noisefast-onnx-") as tmp:
        return cls(export_unet_onnx(unet_or_path, Path(tmp) / "unet", **export_options), **options)
