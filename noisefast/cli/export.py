"""``noisefast export``: write a model's UNet (or SD3 transformer) as ONNX (for ``--backend onnxruntime`` / ``tensorrt``)."""

from __future__ import annotations

import argparse

from noisefast.cli.args import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from noisefast.denoisers.onnx_args import add_export_arguments

    add_export_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from noisefast.denoisers.onnx_export import run_export
    from noisefast.loading import resolve_folder

    args.model = str(resolve_folder(args.model))  # builtin:NAME, a folder, or a hub id (cache first)
    run_export(args)
    return 0


COMMAND = Command("export a model's UNet or SD3 transformer to ONNX (for --backend onnxruntime / tensorrt)",
                  add_arguments, run)
