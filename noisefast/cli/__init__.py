"""The ``noisefast`` command: ``noisefast {score,select,optimize,generate,export,...} [options]``.

Each subcommand is a module of this package exposing ``COMMAND`` (a `noisefast.cli.args.Command`: help
text, ``add_arguments(parser)``, ``run(args) -> exit code``), registered in `COMMANDS` by name; it runs
the use cases of `noisefast.workflows` and only parses, prints and writes files. Only the subcommand being
run is imported (its options need no torch), so ``noisefast --help`` and ``noisefast CMD --help`` answer at once.

Exit codes: 0 success; 2 bad input, model or output path (a `noisefast.errors.NoisefastError` or an
argparse error, printed as one line); 130 interrupted (Ctrl-C; what finished is kept and reported);
1 an internal error (a bug: one line, and the traceback with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from noisefast.cli.args import Command, parse_seeds

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130

EXIT_INTERNAL = 1
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


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, optional-dependency notices) is not the command's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import logging

        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        for lib in (dlog, tlog):  # their failures reach the user as noisefast's own one-line errors
            lib.disable_progress_bar()
            lib.set_verbosity(logging.CRITICAL)
    except ImportError:
        pass


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 500 else text[:497] + "..."


def main(argv: list[str] | None = None) -> int:
    from noisefast.errors import NoisefastError

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv[:1] or os.environ.get("NOISEFAST_DEBUG") == "1"
    args = build_parser(argv).parse_args(argv)
    if not debug:
        _quiet_libraries()
    try:
        return int(args._command.run(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("noisefast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NoisefastError as e:
        if debug:
            raise
        print(f"noisefast {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug, or an environment failure no check foresaw: one line, traceback on request
        if debug:
            raise
        print(f"noisefast {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              f"(run with --debug for the traceback)", file=sys.stderr)  # fmt: skip
        return EXIT_INTERNAL


__all__ = ["COMMANDS", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main", "parse_seeds"]

if __name__ == "__main__":
    sys.exit(main())
