"""ONNX exports kept in the cache, so a model is exported once per machine, not once per process.

    path = cached_export(unet, cache_root, {"dynamic_hw": True})   # <cache>/onnx/<key>/model.onnx

The key (`noisefast.denoisers.cache`) is the UNet's fingerprint (weights and config), the export options and
the torch / onnx versions. An export is reused only when it is intact (`export_is_intact`: its metadata
parses, every file it names exists and still has the size and modification time recorded when it was
written — and, for exports under `FULL_HASH_BYTES`, the content hash itself matches); anything else is exported
again, atomically, over it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from noisefast.denoisers.artifacts import sha256_files
from noisefast.denoisers.cache import digest, library_versions, module_fingerprint

FULL_HASH_BYTES = 256 << 20  # exports smaller than this are re-hashed before reuse (a tiny model: milliseconds)


def ort_export_options(unet: torch.nn.Module) -> dict:
    """How the onnxruntime backend (and ``auto``) exports a model: in the UNet's dtype, any latent size (the
    dynamic height/width costs ONNX Runtime nothing), traced at a small latent — the smallest the UNet's
    downsampling takes times 8, at most its own size: SDXL's traces at 32² instead of 128² (a 1024² forward).
    An SD3 transformer (no down blocks) traces at the export's default size."""
    if not unet.config.get("block_out_channels"):
        return {"dtype": unet.dtype, "dynamic_hw": True}
    levels = len(unet.config.block_out_channels)
    size = unet.config.sample_size
    trace = min(size, 8 * 2 ** (levels - 1)) if isinstance(size, int) else size
    return {"dtype": unet.dtype, "dynamic_hw": True, "latent_size": trace}


def export_key(unet: torch.nn.Module, options: dict) -> str:
    """The cache key of ``unet`` exported with ``options`` (`export_unet_onnx` keywords)."""
    opts = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in sorted(options.items())}
    return digest({"unet": module_fingerprint(unet), "options": opts, "versions": library_versions("onnx")})


def export_folder(unet: torch.nn.Module, cache_root: Path, options: dict) -> Path:
    """Where the cache keeps ``unet`` exported with ``options``: ``<cache>/onnx/<key>/``."""
    return Path(cache_root) / "onnx" / export_key(unet, options)[:32]


def export_is_intact(model_path: Path) -> bool:
    """Whether the export at ``model_path`` can be trusted (see the module docstring)."""
    from noisefast.denoisers.onnx_io import onnx_files, read_export_meta

    try:
        meta = read_export_meta(model_path)
        if not meta or not meta.get("sha256"):
            return False
        files = onnx_files(model_path)
        if not all(f.is_file() for f in files):
            return False
        stamps = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}
        if stamps == meta.get("files") and sum(s for s, _ in stamps.values()) > FULL_HASH_BYTES:
            return True
        return sha256_files(files) == meta["sha256"]
    except Exception:  # any failure to read it (OSError, bad JSON, onnx's protobuf DecodeError): not intact
        return False


def cached_export(unet: torch.nn.Module, cache_root: Path, options: dict | None = None) -> tuple[Path, bool]:
    """``(model.onnx path, exported_now)``: the intact cached export of ``unet`` with ``options``, made if needed."""
    from noisefast.denoisers.onnx_export import export_unet_onnx
    from noisefast.denoisers.onnx_io import MODEL_FILE

    options = dict(options or {})
    folder = export_folder(unet, cache_root, options)
    if export_is_intact(folder / MODEL_FILE):
        return folder / MODEL_FILE, False
    if folder.exists():  # a damaged entry of ours: rebuilt, never trusted
        shutil.rmtree(folder, ignore_errors=True)
    return export_unet_onnx(unet, folder, **options), True


__all__ = ["FULL_HASH_BYTES", "cached_export", "export_folder", "export_is_intact", "export_key", "ort_export_options"]
