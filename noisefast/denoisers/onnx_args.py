"""The ONNX export's command-line options (``noisefast export``, ``python -m noisefast.denoisers.onnx_export``),
apart from the exporter so that ``--help`` needs no torch. Each number is range-checked as it is parsed."""

from __future__ import annotations

import argparse

from noisefast.params import MAX_BATCH, Param

EXPORT_DTYPE_NAMES = ("float16", "float32")
_SIDE = Param("height/width", int, "", 8, 8192).arg_type()  # pixels; beyond 8192 no UNet here is in range
_BATCH = Param("static batch", int, "", 1, MAX_BATCH).arg_type()
_SEQ = Param("seq-len", int, "", 1, 4096).arg_type()
_OPSET = Param("opset", int, "", 7, 30).arg_type()


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The export options, for ``python -m noisefast.denoisers.onnx_export`` and ``noisefast export``."""
    parser.add_argument("--model", required=True, help="diffusers pipeline or UNet folder, or a hub id")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--dtype", choices=EXPORT_DTYPE_NAMES, default="float32")
    parser.add_argument("--device", default=None, help="device to trace on (default: where the model loads, cpu)")
    parser.add_argument("--height", type=_SIDE, default=None, help="image height in pixels (latent = height / 8)")
    parser.add_argument("--width", type=_SIDE, default=None, help="image width in pixels (latent = width / 8)")
    parser.add_argument("--dynamic-hw", action="store_true", help="accept any latent height/width")
    parser.add_argument("--static-batch", type=_BATCH, default=None, help="fix the batch size (default: dynamic)")
    parser.add_argument("--seq-len", type=_SEQ, default=77, help="prompt embedding length traced (SDXL: 77)")
    parser.add_argument("--static-seq", action="store_true", help="accept only --seq-len (default: any length)")
    parser.add_argument("--opset", type=_OPSET, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--external-data", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    return parser



__all__ = ["EXPORT_DTYPE_NAMES", "add_export_arguments"]
