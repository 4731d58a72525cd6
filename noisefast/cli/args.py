"""The command line's shared pieces: the `Command` record, argument types (each refusing bad text with a
one-line reason) and the option groups every model-driven subcommand spells the same way.

The engine options come from `noisefast.config.EngineConfig.add_cli_args`, the sampling settings and the
optimisation options from the `noisefast.params` records (their ranges, defaults and help) — the same records
the Engine checks with and the HTTP schemas are built from. Nothing here imports torch (``--help`` is fast)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass

from noisefast.config import EngineConfig
from noisefast.errors import InputError
from noisefast.params import OPTIMIZE, SEED_LIMIT, SETTINGS, Param

MAX_CLI_SEEDS = 10_000_000  # seeds one command expands in memory (use `noisefast screen` shards beyond)


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` declares its options, ``run(args)`` returns the exit code."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --- argument types ---------------------------------------------------------------------------------------
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
            if stop > SEED_LIMIT:
                raise argparse.ArgumentTypeError(
                    f"bad seed range {part!r}: seeds must be below 2**63 (what torch.Generator.manual_seed takes here)"
                )
            if len(seeds) + len(range(start, stop, step)) > MAX_CLI_SEEDS:
                raise argparse.ArgumentTypeError(
                    f"bad seeds {text!r}: more than {MAX_CLI_SEEDS:,} seeds in one command (use noisefast screen)"
                )
            seeds.extend(range(start, stop, step))
        elif re.fullmatch(r"\d+", part):
            if int(part) >= SEED_LIMIT:
                raise argparse.ArgumentTypeError(
                    f"bad seed {part}: seeds must be below 2**63 (what torch.Generator.manual_seed takes here)"
                )
            seeds.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"bad seed {part!r}: seeds are non-negative integers (e.g. 0:100 or 1,5,9)")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"bad seeds {text!r}: a seed is listed twice")
    return seeds


def single_seed(text: str) -> list[int]:
    """``--seed N``: the same list as ``--seeds N``, refusing ranges."""
    seeds = parse_seeds(text)
    if len(seeds) != 1:
        raise argparse.ArgumentTypeError(f"--seed takes one seed, got {text!r} (use --seeds for several)")
    return seeds


def out_path(text: str) -> str:
    """``--out``: a path; an empty one (which would write into the current folder) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: name a folder (--out . for the current folder)")
    return text


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argument type: an integer in [lo, hi] (a nameless `noisefast.params.Param`)."""
    return Param("", int, "", lo, hi).arg_type()


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    """An argument type: a finite number in [lo, hi] (the range the computation can hold)."""
    return Param("", float, "", lo, hi).arg_type()


positive_int = int_in(1, 2**31 - 1)


# --- shared option groups -----------------------------------------------------------------------------------
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The engine options (`EngineConfig.add_cli_args`); `EngineConfig.from_cli_args` reads them back."""
    EngineConfig.add_cli_args(p)


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
    """The per-call sampling settings (`noisefast.params.SETTINGS`, but ``batch_size``: an engine option)."""
    g = p.add_argument_group("sampling (defaults come from the model)")
    for param in SETTINGS.values():
        if param.name != "batch_size":
            g.add_argument(param.cli_flag, dest=param.name, type=param.arg_type(), help=param.help)


def add_output_arguments(p: argparse.ArgumentParser, *, images: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", type=out_path, default="out", metavar="DIR", help="folder for the report" + (" and PNGs" if images else "")
                   + " (default: out)")  # fmt: skip
    g.add_argument("--json", action="store_true", help="print the report as JSON on stdout instead of a summary")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")  # fmt: skip


def add_optimize_arguments(p: argparse.ArgumentParser) -> None:
    """Algorithm 2's options (`noisefast.params.OPTIMIZE`) and ``--renorm``."""
    g = p.add_argument_group("optimisation (Algorithm 2)")
    for param in OPTIMIZE.values():
        default = f" (default: {param.default:g})" if param.default is not None else ""
        g.add_argument(param.cli_flag, dest=param.name, type=param.arg_type(), help=param.help + default)
    g.add_argument("--renorm", action=argparse.BooleanOptionalAction, default=None,
                   help="after each step put the noise back on the Gaussian shell ‖ε‖ = √D (keeps it a plausible noise; "
                        "default: the model's — off for SDXL as in the paper, on for builtin:digits)")  # fmt: skip


def optimize_options(args: argparse.Namespace) -> dict:
    """The optimisation options given on the command line (None = the model's or the library's default)."""
    return {name: getattr(args, name) for name in OPTIMIZE} | {"renorm": args.renorm}


def read_prompts(args: argparse.Namespace) -> list[str]:
    """``--prompt`` or the non-empty, non-comment lines of ``--prompts-file`` (UTF-8, lines end at \\n or \\r\\n
    only: `noisefast.textio`)."""
    from noisefast.textio import check_text, read_text_lines

    if getattr(args, "negative_prompt", None) is not None:
        check_text(args.negative_prompt, "--negative-prompt")
    if args.prompt is not None:
        if not args.prompt.strip():
            raise InputError("--prompt is empty")
        return [check_text(args.prompt, "--prompt")]
    lines = read_text_lines(args.prompts_file, "--prompts-file")
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"--prompts-file {args.prompts_file} holds no prompts")
    return prompts


def settings_overrides(args: argparse.Namespace) -> dict:
    """The sampling settings given on the command line (None = the model's default)."""
    return {name: getattr(args, name) for name in SETTINGS if name != "batch_size"}
