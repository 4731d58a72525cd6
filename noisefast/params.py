"""Every user-facing parameter, declared once: its type, range, default and help — and the one check of it.

The Engine validates with `Param.check`; the command line builds its options from the same records
(`noisefast.cli.args`); the HTTP schemas take their bounds and defaults from them (`noisefast.serve.schemas`).
So ``lr = 0`` is refused the same way by ``Engine.optimize(lr=0)``, ``noisefast optimize --lr 0`` and
``POST /v1/optimize {"lr": 0}``, with the same message naming ``lr``.

This module imports nothing heavy (no torch): the command line's ``--help`` reads it.

    SETTINGS   the per-call sampling settings (`noisefast.settings.Settings`): size, steps, guidance, rows/batch
    OPTIMIZE   Algorithm 2's options (`Engine.optimize`)
"""

from __future__ import annotations

import argparse
import math
import operator
from dataclasses import dataclass

from noisefast.defaults import DEFAULT_ITERATIONS, DEFAULT_MOMENTUM
from noisefast.errors import InputError

SEED_LIMIT = 2**63  # seeds are ints in [0, 2**63) (what torch.Generator.manual_seed takes)
MAX_GUIDANCE = 1e3  # |w| above this: m_u + w·(m_c − m_u) leaves fp16 range for ordinary model outputs
# The denoising scale is in [0, MAX_GUIDANCE]: diffusers runs CFG only above 1, so every w_d ≤ 1 is the conditional
# half alone and a negative one would silently mean the same as 0. The inversion scale w_i keeps [−1000, 1000]:
# m = m_u + w_i·(m_c − m_u) is defined for every w_i (w_i < 0 pushes away from the prompt).
MAX_STEPS = 1000  # DDIM steps cannot exceed the training timesteps (1000 for every model here)
MAX_BATCH = 4096  # rows per UNet batch
MAX_ITERATIONS = 100_000  # Algorithm 2's gradient steps per call
MIN_LR, MAX_LR = 1e-12, 1e6  # lr > 0 (0 never moves the noise); 1e-12 has been the CLI's floor since 0.1


@dataclass(frozen=True)
class Param:
    """One parameter: ``kind`` int / float / bool; the closed range [lo, hi] (``lo_open``: lo excluded);
    ``default`` None means "the model's" (filled from `noisefast.defaults.ModelDefaults`)."""

    name: str
    kind: type
    help: str
    lo: float | None = None
    hi: float | None = None
    default: object = None
    lo_open: bool = False
    flag: str | None = None  # the command-line spelling, when it is not --name-with-dashes

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def range_text(self, hi: float | None = None) -> str:
        hi = self.hi if hi is None else hi
        left = "(" if self.lo_open else "["
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        return f"{left}{lo}, {'inf' if hi is None else f'{hi:g}'}]"

    def check(self, value, *, hi: float | None = None):
        """``value`` as this parameter's type, in range (``hi`` tightens the upper bound, e.g. a server limit);
        an `InputError` naming the parameter otherwise. Bools are never numbers, floats never integers."""
        hi = self.hi if hi is None else hi
        if self.kind is bool:
            if not isinstance(value, bool):
                raise InputError(f"{self.name} must be true or false, got {value!r}", field=self.name)
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_index(value):
            raise InputError(f"{self.name} must be {'an integer' if self.kind is int else 'a number'}, got {value!r}",
                             field=self.name)  # fmt: skip
        if self.kind is int:
            if isinstance(value, float):  # 8.0 is not an integer here (JSON front ends decide on their own)
                raise InputError(f"{self.name} must be an integer, got {value!r}", field=self.name)
            value = operator.index(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise InputError(f"{self.name} must be finite, got {value}", field=self.name)
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        if too_low or (hi is not None and value > hi):
            raise InputError(f"{self.name} must be in {self.range_text(hi)}, got {value:g}", field=self.name)
        return value

    def arg_type(self, *, hi: float | None = None):
        """An argparse ``type=``: the text parsed as this parameter and `check`-ed; argparse prints the message
        ("argument --steps: expected an integer in [1, 1000], got 5000 (steps must be in [1, 1000])")."""
        kind = "an integer" if self.kind is int else "a finite number"

        def parse(text: str):
            try:
                value = int(text) if self.kind is int else float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
            try:
                return self.check(value, hi=hi)
            except InputError as e:
                detail = f" ({e})" if self.name else ""
                raise argparse.ArgumentTypeError(f"expected {kind} in {self.range_text(hi)}, got {text}{detail}") from None

        parse.__name__ = "integer" if self.kind is int else "number"
        return parse


def _is_index(v) -> bool:
    try:
        operator.index(v)
        return True
    except TypeError:
        return False


def _params(*ps: Param) -> dict[str, Param]:
    return {p.name: p for p in ps}


SETTINGS = _params(
    Param("height", int, "image height in pixels (a multiple of the model's spatial factor: 8 for SDXL, 16 for SD3/FLUX)",
          1),
    Param("width", int, "image width in pixels (a multiple of the model's spatial factor: 8 for SDXL, 16 for SD3/FLUX)",
          1),
    Param("steps", int, "denoising steps (DDIM; Euler for SD3/FLUX)", 1, MAX_STEPS),
    Param("inversion_steps", int, "inversion steps", 1, MAX_STEPS),
    Param("guidance_scale", float, "guidance scale of denoising, in [0, 1000]: > 1 runs CFG; ≤ 1 the conditional half "
          "alone, as diffusers' pipelines (SDXL-Turbo's 0); FLUX.1-dev: the embedded guidance", 0.0, MAX_GUIDANCE,
          flag="--guidance"),
    Param("inversion_guidance_scale", float,
          "inversion guidance w_i: m = m_u + w_i·(m_c − m_u) for every w_i; 1 = conditional (the paper's default), "
          "0 = unconditional (Z-Sampling), other values run both halves", -MAX_GUIDANCE, MAX_GUIDANCE,
          flag="--inversion-guidance"),
    Param("batch_size", int, "rows per UNet batch (default: the model's — 8 for SDXL, 64 for builtin:digits)", 1,
          MAX_BATCH),
)  # fmt: skip

THREADS = Param("threads", int, "CPU threads for torch and ONNX Runtime (default: torch 1 for pixel models on CPU, whose "
                "tiny layers lose to its spin-waiting threads, else torch's default; ONNX Runtime every core, not "
                "spinning)", 1, 1024)

OPTIMIZE = _params(
    Param("iterations", int, "gradient steps", 1, MAX_ITERATIONS, default=DEFAULT_ITERATIONS),
    Param("lr", float, "learning rate (default: the model's; 100, the paper's, for SDXL)", MIN_LR, MAX_LR),
    Param("momentum", float, "momentum", 0.0, 0.999, default=DEFAULT_MOMENTUM),
    Param("target", float, "stop once every sample's stability reaches this", -1.0, 1.0),
    Param("grad_clip", float, "clip each sample's gradient to this L2 norm", 0.0, 1e12, lo_open=True),
)

__all__ = ["MAX_BATCH", "MAX_GUIDANCE", "MAX_ITERATIONS", "MAX_LR", "MIN_LR", "MAX_STEPS", "OPTIMIZE", "Param", "SEED_LIMIT",
           "SETTINGS", "THREADS"]  # fmt: skip
