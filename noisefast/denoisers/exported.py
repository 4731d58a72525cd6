"""The backends that run an ONNX export of the model (``onnxruntime``, ``tensorrt``), built from an export or from the
module: `exported_denoiser` (what `noisefast.denoisers.backends.make_denoiser` and ``auto`` call).

A module is exported into ``export_dir`` when given, else into the cache (`noisefast.denoisers.onnx_cache`: once per
model and options, reused by every later process); the denoiser then carries the eager UNet as its ``autograd``
(gradients go through torch). ONNX Runtime exports in the UNet's dtype at any latent size; TensorRT in fp16.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from noisefast.denoisers.cache import cache_dir as cache_root


def _is_onnx(ref) -> bool:
    if not isinstance(ref, (str, os.PathLike)):
        return False
    from noisefast.denoisers.onnx_io import MODEL_FILE

    p = Path(ref)
    return p.suffix == ".onnx" or (p / MODEL_FILE).is_file()


def exported_denoiser(unet_or_path, backend: str, *, export_dir=None, export_options: dict | None = None,
                      cache_dir=None, **options):
    """``backend`` (``"onnxruntime"`` or ``"tensorrt"``) over an export (folder / .onnx) or a module / model path."""
    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"exported_denoiser runs onnxruntime or tensorrt, not {backend!r}")
    if backend == "tensorrt":
        from noisefast.denoisers.trt import TensorRTDenoiser, require_tensorrt

        require_tensorrt()  # fail now, not after a minutes-long export
        cls, default_export = TensorRTDenoiser, {"dtype": torch.float16}
        if cache_dir is not None:
            options.setdefault("cache_dir", cache_root(cache_dir) / "tensorrt")
    else:
        from noisefast.denoisers.ort import OnnxRuntimeDenoiser, _import_onnxruntime

        _import_onnxruntime()
        cls, default_export = OnnxRuntimeDenoiser, None
    if _is_onnx(unet_or_path):
        if export_dir is not None or export_options:
            raise ValueError("export_dir/export_options apply only when exporting a model, not to an existing export")
        return cls(unet_or_path, **options)

    from noisefast.denoisers.onnx_cache import cached_export, ort_export_options
    from noisefast.denoisers.onnx_export import export_unet_onnx, load_unet
    from noisefast.denoisers.unet import UNetDenoiser

    if not isinstance(unet_or_path, torch.nn.Module):
        unet_or_path = load_unet(unet_or_path, dtype=options.pop("dtype", None), device=options.pop("device", None))
    if default_export is None:
        default_export = ort_export_options(unet_or_path)
    export_options = {**default_export, **(export_options or {})}
    if export_dir is not None:
        path = export_unet_onnx(unet_or_path, export_dir, **export_options)
    else:
        path, _ = cached_export(unet_or_path, cache_root(cache_dir), export_options)
    return cls(path, autograd=UNetDenoiser(unet_or_path), **options)


__all__ = ["exported_denoiser"]
