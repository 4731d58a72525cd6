"""The ``noisefast`` command: ``noisefast {score,select,optimize,generate,...} [options]``.

Subcommands are registered in `COMMANDS` as ``name → "module:ATTRIBUTE"``, where the attribute is a
`Command` (help text, ``add_arguments(parser)``, ``run(args) -> exit code``); a module is imported only
when its subcommand runs (or ``--help`` lists it). Adding one is one line here plus its module. The
shared options (model, prompt, seeds, DDIM settings, output) are added with the ``add_*_arguments``
helpers below, so every model-driven subcommand spells them the same way.

Exit codes: 0 success, 2 bad input or model (a `NoisefastError`, ``ValueError`` or argparse error,
printed as one line), 130 interrupted (Ctrl-C; what finished is kept and reported).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MODEL = "builtin:digits"
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
BACKEND_CHOICES = ("torch", "compile", "onnxruntime", "tensorrt")

# name → "module:ATTRIBUTE" of a `Command`
COMMANDS: dict[str, str] = {
    "score": "noisefast.commands:SCORE",
    "select": "noisefast.commands:SELECT",
    "optimize": "noisefast.commands:OPTIMIZE",
    "generate": "noisefast.commands:GENERATE",
    "export": "noisefast.commands:EXPORT",
}


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` declares its options, ``run(args)`` returns the exit code."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def load_command(name: str) -> Command:
    module, _, attr = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


# --- argument types ---------------------------------------------------------------------------------------
SEED_MAX = 2**63


def parse_seeds(text: str) -> list[int]:
    """``"0:100"`` (start:stop[:step], stop exclusive), ``"3,7,9"``, or a mix: ``"0:10,42"``."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise argparse.ArgumentTypeError(f"bad seed list {text!r}: empty item")
        if ":" in part:
            bits = part.split(":")
            if len(bits) not in (2, 3) or not all(re.fullmatch(r"\d+", b.strip()) for b in bits):
                raise argparse.ArgumentTypeError(
                    f"bad seed range {part!r}: use START:STOP or START:STOP:STEP with non-negative integers, e.g. 0:100"
                )
            start, stop, *step = (int(b) for b in bits)
            step = step[0] if step else 1
            if stop <= start or step < 1:
                raise argparse.ArgumentTypeError(
                    f"bad seed range {part!r}: STOP must be greater than START (STOP is exclusive) and STEP ≥ 1"
                )
            seeds.extend(range(start, stop, step))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"bad seed {part!r}: seeds are non-negative integers (e.g. 0:100 or 1,5,9)")
    if any(s >= SEED_MAX for s in seeds):
        raise argparse.ArgumentTypeError(f"bad seeds {text!r}: seeds must be below 2**63")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"bad seeds {text!r}: a seed is listed twice")
    return seeds


def single_seed(text: str) -> list[int]:
    """``--seed N``: the same list as ``--seeds N``, refusing ranges."""
    seeds = parse_seeds(text)
    if len(seeds) != 1:
        raise argparse.ArgumentTypeError(f"--seed takes one seed, got {text!r} (use --seeds for several)")
    return seeds


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


# --- shared option groups -----------------------------------------------------------------------------------
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id (from the local cache, else downloaded), local diffusers folder, or builtin:NAME "
                        f"(default: {DEFAULT_MODEL}, runs on a CPU in seconds)")
    g.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default: fp16 on CUDA for SDXL, else fp32")
    g.add_argument("--backend", default="torch", choices=BACKEND_CHOICES, help="UNet forward backend (default: torch)")
    g.add_argument("--threads", type=positive_int,
                   help="CPU threads for torch (default: 1 for pixel models on CPU, whose tiny layers lose to "
                        "threading overhead; torch's default otherwise)")  # fmt: skip
    g.add_argument("--variant", help="diffusers weight variant to load, e.g. fp16")
    g.add_argument("--family", choices=("sdxl", "sdxl-turbo"),
                   help="force SDXL or SDXL-Turbo defaults (default: detected from the scheduler and name)")  # fmt: skip


def add_prompt_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the text prompt")
    src.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (blank lines and # comments skipped)")
    g.add_argument("--negative-prompt", help="negative prompt (used where guidance > 1)")


def add_seed_arguments(p: argparse.ArgumentParser, *, default: str, help_: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=parse_seeds, default=parse_seeds(default), metavar="SPEC",
                   help=f"{help_}: START:STOP[:STEP] (stop exclusive), a comma list, or a mix (default: {default})")
    g.add_argument("--seed", type=single_seed, dest="seeds", metavar="N", help="a single seed")  # fmt: skip


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults come from the model)")
    g.add_argument("--steps", type=positive_int, help="DDIM denoising steps")
    g.add_argument("--inversion-steps", type=positive_int, help="DDIM inversion steps")
    g.add_argument("--guidance", type=finite_float, help="classifier-free guidance scale of denoising (> 1 runs CFG)")
    g.add_argument("--inversion-guidance", type=finite_float, help="guidance scale of the inversion")
    g.add_argument("--height", type=positive_int, help="image height in pixels (a multiple of 8 for SDXL)")
    g.add_argument("--width", type=positive_int, help="image width in pixels (a multiple of 8 for SDXL)")
    g.add_argument("--batch-size", type=positive_int, help="candidates per UNet batch (default: 8)")


def add_output_arguments(p: argparse.ArgumentParser, *, images: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", default="out", metavar="DIR", help="folder for the report" + (" and PNGs" if images else "")
                   + " (default: out)")  # fmt: skip
    g.add_argument("--json", action="store_true", help="print the report as JSON on stdout instead of a summary")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")  # fmt: skip


def read_prompts(args: argparse.Namespace) -> list[str]:
    """``--prompt`` or the non-empty, non-comment lines of ``--prompts-file``."""
    from noisefast.loading import NoisefastError

    if args.prompt is not None:
        if not args.prompt.strip():
            raise NoisefastError("--prompt is empty")
        return [args.prompt]
    try:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as e:
        raise NoisefastError(f"cannot read --prompts-file: {e}") from None
    if not prompts:
        raise NoisefastError(f"--prompts-file {args.prompts_file} holds no prompts")
    return prompts


def settings_overrides(args: argparse.Namespace) -> dict:
    """The Engine settings given on the command line (None = the model's default)."""
    return dict(
        height=args.height, width=args.width, steps=args.steps, inversion_steps=args.inversion_steps,
        guidance_scale=args.guidance, inversion_guidance_scale=args.inversion_guidance, batch_size=args.batch_size,
    )  # fmt: skip


# --- progress -----------------------------------------------------------------------------------------------
class Progress:
    """A one-line stderr progress bar: ``label [#####.....] done/total unit elapsed``; silent when disabled."""

    def __init__(self, label: str, unit: str, enabled: bool, stream=None):
        self.label, self.unit, self.enabled = label, unit, enabled
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 24
        fill = int(width * done / max(total, 1))
        elapsed = time.perf_counter() - self.t0
        eta = f", ~{elapsed / done * (total - done):.0f} s left" if 0 < done < total else ""
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {self.unit} "
                          f"{elapsed:.1f} s{eta}   ")  # fmt: skip
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def progress_enabled(args: argparse.Namespace) -> bool:
    if args.progress is not None:
        return args.progress
    return sys.stderr.isatty()


# --- main ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from noisefast import __version__

    parser = argparse.ArgumentParser(
        prog="noisefast",
        description="Diffusion noise selection and optimization by inversion stability (SDXL, SDXL-Turbo, built-in models).",
    )
    parser.add_argument("--version", action="version", version=f"noisefast {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and library logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        cmd = load_command(name)
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, optional-dependency notices) is not the command's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv[:1] or os.environ.get("NOISEFAST_DEBUG") == "1"
    if not debug:
        _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    from noisefast.loading import NoisefastError

    try:
        return int(args._command.run(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("noisefast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (NoisefastError, ValueError, TypeError) as e:
        if debug:
            raise
        print(f"noisefast {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
