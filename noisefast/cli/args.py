"""The command line's shared pieces: the `Command` record, argument types (each refusing bad text with a
one-line reason) and the option groups every model-driven subcommand spells the same way."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from noisefast.defaults import DEFAULT_ITERATIONS, DEFAULT_MOMENTUM, FAMILIES
from noisefast.denoisers.backends import BACKENDS
from noisefast.denoisers.fastpath import ATTENTION
from noisefast.errors import InputError
from noisefast.seeds import SEED_LIMIT
from noisefast.settings import MAX_GUIDANCE

DEFAULT_MODEL = "builtin:digits"
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


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argument type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    """An argument type: a finite number in [lo, hi] (the range the computation can hold)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected a finite number in [{lo:g}, {hi:g}], got {text}")
        return v

    parse.__name__ = "number"
    return parse


positive_int = int_in(1, 2**31 - 1)
guidance_float = float_in(-MAX_GUIDANCE, MAX_GUIDANCE)


# --- shared option groups -----------------------------------------------------------------------------------
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id (from the local cache, else downloaded), local diffusers folder, or builtin:NAME "
                        f"(default: {DEFAULT_MODEL}, runs on a CPU in seconds)")  # fmt: skip
    g.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=("fp16", "bf16", "fp32"),
                   help="default: on CUDA fp16 for SDXL, bf16 for SD3/FLUX; else fp32")
    g.add_argument("--backend", default="torch", choices=BACKENDS, help="UNet forward backend (default: torch)")
    g.add_argument("--threads", type=int_in(1, 1024),
                   help="CPU threads for torch (default: 1 for pixel models on CPU, whose tiny layers lose to "
                        "threading overhead; torch's default otherwise)")  # fmt: skip
    g.add_argument("--variant", help="diffusers weight variant to load, e.g. fp16")
    g.add_argument("--family", choices=FAMILIES,
                   help="force a family's defaults: sdxl/sdxl-turbo for SDXL, sd3/sd3-turbo for SD3, flux-dev/"
                        "flux-schnell for FLUX (default: detected from the scheduler, transformer and name)")  # fmt: skip
    g.add_argument("--strict", action="store_true",
                   help="refuse to run without the fused kernels (instead of the slower pure-torch fallback)")
    f = p.add_argument_group("GPU fast path (noisefast.denoisers.fastpath)")
    f.add_argument("--fast", action="store_true", help="all of the below, fp16 (what bench/gpu_check.sh measures)")
    f.add_argument("--channels-last", action="store_true", help="UNet in channels_last memory format")
    f.add_argument("--attention", choices=ATTENTION, default="default", help="attention kernel (default: diffusers')")
    f.add_argument("--fuse-qkv", action="store_true", help="one QKV matmul per attention")
    f.add_argument("--cuda-graph", action="store_true",
                   help="capture the denoise→invert→cosine chain per batch size and replay it (CUDA)")
    f.add_argument("--pinned", action="store_true", help="draw seed noise into pinned host buffers, copy non_blocking")


def fast_path_options(args: argparse.Namespace):
    """`FastPathOptions` from the fast-path flags, or None for the plain path."""
    from noisefast.denoisers.fastpath import FastPathOptions

    if args.fast:
        return FastPathOptions.turbo()
    opts = FastPathOptions(channels_last=args.channels_last, attention=args.attention, fuse_qkv=args.fuse_qkv,
                           cuda_graph=args.cuda_graph, pinned=args.pinned)  # fmt: skip
    return None if opts == FastPathOptions() else opts


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
    g.add_argument("--steps", type=positive_int, help="denoising steps (DDIM, or Euler for SD3/FLUX)")
    g.add_argument("--inversion-steps", type=positive_int, help="inversion steps")
    g.add_argument("--guidance", type=guidance_float, help="classifier-free guidance scale of denoising (> 1 runs CFG)")
    g.add_argument("--inversion-guidance", type=guidance_float,
                   help="inversion guidance w_i: m = m_u + w_i·(m_c − m_u) for every w_i; 1 = conditional (the paper's "
                        "default), 0 = unconditional (Z-Sampling), other values run both halves")  # fmt: skip
    g.add_argument("--height", type=positive_int, help="image height in pixels (a multiple of 8 for SDXL)")
    g.add_argument("--width", type=positive_int, help="image width in pixels (a multiple of 8 for SDXL)")
    g.add_argument("--batch-size", type=positive_int, help="rows per UNet batch (default: the model's — 8 for SDXL, 64 for builtin:digits)")


def add_output_arguments(p: argparse.ArgumentParser, *, images: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", default="out", metavar="DIR", help="folder for the report" + (" and PNGs" if images else "")
                   + " (default: out)")  # fmt: skip
    g.add_argument("--json", action="store_true", help="print the report as JSON on stdout instead of a summary")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")  # fmt: skip


def add_optimize_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation (Algorithm 2)")
    g.add_argument("--iterations", type=int_in(1, 100_000), default=DEFAULT_ITERATIONS,
                   help=f"gradient steps (default: {DEFAULT_ITERATIONS})")  # fmt: skip
    g.add_argument("--lr", type=float_in(1e-12, 1e6), default=None,
                   help="learning rate (default: the model's; 100, the paper's, for SDXL)")  # fmt: skip
    g.add_argument("--momentum", type=float_in(0.0, 0.999), default=DEFAULT_MOMENTUM,
                   help=f"momentum in [0, 1) (default: {DEFAULT_MOMENTUM})")  # fmt: skip
    g.add_argument("--target", type=float_in(-1.0, 1.0), help="stop a sample once its stability reaches this")
    g.add_argument("--renorm", action=argparse.BooleanOptionalAction, default=None,
                   help="after each step put the noise back on the Gaussian shell ‖ε‖ = √D (keeps it a plausible noise; "
                        "default: the model's — off for SDXL as in the paper, on for builtin:digits)")  # fmt: skip


def read_prompts(args: argparse.Namespace) -> list[str]:
    """``--prompt`` or the non-empty, non-comment lines of ``--prompts-file`` (UTF-8)."""
    if args.prompt is not None:
        if not args.prompt.strip():
            raise InputError("--prompt is empty")
        return [args.prompt]
    try:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except UnicodeDecodeError as e:
        raise InputError(f"--prompts-file {args.prompts_file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"cannot read --prompts-file {args.prompts_file}: {e.strerror or e}") from None
    if not prompts:
        raise InputError(f"--prompts-file {args.prompts_file} holds no prompts")
    return prompts


def settings_overrides(args: argparse.Namespace) -> dict:
    """The Engine settings given on the command line (None = the model's default)."""
    return dict(
        height=args.height, width=args.width, steps=args.steps, inversion_steps=args.inversion_steps,
        guidance_scale=args.guidance, inversion_guidance_scale=args.inversion_guidance, batch_size=args.batch_size,
    )  # fmt: skip
