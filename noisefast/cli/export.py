"""``noisefast export``: write a model's UNet (or SD3 transformer) as ONNX (for ``--backend onnxruntime`` / ``tensorrt``)."""

from __future__ import annotations

import argparse

from noisefast.cli.args import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from noisefast.denoisers.onnx_args import add_export_arguments

    add_export_arguments(parser)


def check_trace_fits(folder, args: argparse.Namespace) -> None:
    """Refuse (`LimitError`) a trace whose example batch would not fit the device — before the UNet is loaded.

    The same order-of-magnitude estimate the Engine applies to a UNet batch (`noisefast.settings.check_fits_memory`)
    at the traced shape: ``--static-batch`` (else 2) rows of ``--height``/``--width`` (else the UNet's sample size)."""
    from pathlib import Path

    import torch

    from noisefast.errors import ModelError
    from noisefast.loading import read_json, resolve_device
    from noisefast.settings import check_fits_memory

    folder = Path(folder)
    path = folder / "config.json" if (folder / "config.json").is_file() else folder / "unet" / "config.json"
    if not path.is_file():
        return  # the exporter says what is missing
    cfg = read_json(path, "the UNet config")
    try:
        size = cfg.get("sample_size", 64)
        h, w = (args.height // 8, args.width // 8) if None not in (args.height, args.width) else (
            (size, size) if isinstance(size, int) else tuple(size))  # fmt: skip
        shape = (int(cfg.get("in_channels", 4)), int(h), int(w))
        width = int(cfg.get("block_out_channels", [320])[0])
    except (TypeError, ValueError, IndexError):
        raise ModelError(f"{path}: in_channels, sample_size or block_out_channels is not what a UNet config holds") from None
    dtype = torch.float16 if args.dtype == "float16" else torch.float32
    check_fits_memory(args.static_batch or 2, shape, width, dtype, resolve_device(args.device or "cpu"),
                      cfg=False, fix="export at a smaller --height/--width or --static-batch (a dynamic export's "
                                     "shapes are free at run time)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from noisefast.denoisers.onnx_export import run_export
    from noisefast.errors import BackendUnavailableError
    from noisefast.loading import resolve_folder

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("noisefast export needs onnx: pip install 'noisefast[onnx]'") from None

    args.model = str(resolve_folder(args.model))  # builtin:NAME, a folder, or a hub id (cache first)
    check_trace_fits(args.model, args)
    run_export(args)
    return 0


COMMAND = Command("export a model's UNet or SD3 transformer to ONNX (for --backend onnxruntime / tensorrt)",
                  add_arguments, run)
