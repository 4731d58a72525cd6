"""The ``noisefast`` argument parser: the subcommands' registry and a parser whose usage errors are one line.

Only the subcommand named on the command line is imported (its options need no torch), so ``noisefast --help``
and ``noisefast CMD --help`` answer at once.
"""

from __future__ import annotations

import argparse
import importlib

from noisefast.cli.args import Command

EXIT_USAGE = 2
COMMANDS: dict[str, tuple[str, str]] = {  # name → (module holding COMMAND, one-line help for `noisefast --help`)
    "score": ("noisefast.cli.score", "inversion stability s(ε) = cos(ε, I(D(ε))) of each seed's noise"),
    "select": ("noisefast.cli.select", "pick the most stable of many seeds (Algorithm 1)"),
    "optimize": ("noisefast.cli.optimize", "optimise each seed's noise for inversion stability (Algorithm 2)"),
    "generate": ("noisefast.cli.generate", "denoise each seed's noise and write the images"),
    "export": ("noisefast.cli.export", "export a model's UNet to ONNX"),
    "serve": ("noisefast.cli.serve", "serve the four algorithms over HTTP"),
    "screen": ("noisefast.cli.screen", "screen many prompts × many seeds into a resumable Parquet dataset"),
    "bench": ("noisefast.cli.bench", "measure noisefast against the diffusers users, on a model, a device or a server"),
}


def load_command(name: str) -> Command:
    return importlib.import_module(COMMANDS[name][0]).COMMAND


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (naming the option and the problem) and a pointer to --help."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` (all of them when ``argv`` is None) gets its options."""
    from noisefast import __version__

    parser = _Parser(
        prog="noisefast",
        description="Diffusion noise selection and optimization by inversion stability (SDXL, SDXL-Turbo, built-in models).",
    )
    parser.add_argument("--version", action="version", version=f"noisefast {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and library logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    chosen = None if argv is None else next((a for a in argv if a in COMMANDS), "")
    for name, (_, summary) in COMMANDS.items():
        if chosen in (None, name):
            cmd = load_command(name)
            p = sub.add_parser(name, help=summary, description=cmd.help)
            cmd.add_arguments(p)
            p.set_defaults(_command=cmd)
        else:
            sub.add_parser(name, help=summary)
    return parser


__all__ = ["COMMANDS", "build_parser", "load_command"]
