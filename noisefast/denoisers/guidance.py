"""Classifier-free guidance batching: one denoiser call on ``[uncond; cond]``, exactly when diffusers does.

diffusers' SDXL pipeline guides when ``guidance_scale > 1`` (``do_classifier_free_guidance``): it runs
the UNet once on the batch ``[negative; positive]`` (negative first), splits the output with
``chunk(2)`` and combines ``m = m_u + w·(m_c − m_u)``. At ``guidance_scale ≤ 1`` (SDXL-Turbo's 0.0, the
inversion default 1.0) it runs the conditional half alone and ``w`` is ignored. `GuidedDenoiser` does
the same and hands ``(m_c, m_u or None)`` to the fused ``ddim_move``, which does the combine.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import fields

import torch

from noisefast.denoisers.base import Condition, Denoiser


def check_guidance_scale(value, name: str = "guidance_scale") -> float:
    """A finite real number, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def do_classifier_free_guidance(guidance_scale: float) -> bool:
    """diffusers' rule: guide (and run the unconditional half) only when ``guidance_scale > 1``."""
    return guidance_scale > 1.0


def cat_conditions(first: Condition, second: Condition) -> Condition:
    """``[first; second]`` along the batch, field by field (both must have the same fields set)."""
    values = {}
    for f in fields(Condition):
        a, b = getattr(first, f.name), getattr(second, f.name)
        if (a is None) != (b is None):
            raise ValueError(f"cannot batch conditions: Condition.{f.name} is set in one half only")
        values[f.name] = None if a is None else torch.cat([a, b])
    return Condition(**values)


def check_condition_batch(cond: Condition, batch: int) -> None:
    """The condition must have batch 1 (broadcast) or exactly ``batch``."""
    if not isinstance(cond, Condition):
        raise TypeError(f"cond must be a noisefast Condition, got {type(cond).__name__}")
    if cond.batch_size not in (1, batch):
        raise ValueError(f"condition batch {cond.batch_size} does not match the latent batch {batch} (nor is it 1)")


class GuidedDenoiser:
    """``(m_c, m_u | None) = guided(x, t)`` for a fixed condition and guidance scale.

    The denoiser-batch condition (``[negative; positive]`` with ``2·batch`` rows, or ``positive`` with
    ``batch`` rows) is built once here, not at every step. Missing negative prompts are zeros, as SDXL's
    ``force_zeros_for_empty_prompt`` does (see `Condition.negative`).
    """

    def __init__(self, den: Denoiser, cond: Condition, batch: int, guidance_scale: float):
        check_condition_batch(cond, batch)
        self.den = den
        self.guidance_scale = check_guidance_scale(guidance_scale)
        self.cfg = do_classifier_free_guidance(self.guidance_scale)
        self.batch = batch
        if self.cfg:
            self.cond = cat_conditions(cond.negative().expand(batch), cond.positive().expand(batch))
        else:
            self.cond = cond.positive().expand(batch)

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W]
        t: int,  # the timestep of this move
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # m_c [B, C, H, W], m_u [B, C, H, W] or None
        if x.shape[0] != self.batch:
            raise ValueError(f"latent batch {x.shape[0]} does not match the guided batch {self.batch}")
        if not self.cfg:
            return self.den(x, torch.full((self.batch,), t, dtype=torch.long, device=x.device), self.cond), None
        # one call on [uncond; cond], diffusers' order; chunk(2) → (m_u, m_c)
        out = self.den(torch.cat([x, x]), torch.full((2 * self.batch,), t, dtype=torch.long, device=x.device), self.cond)
        m_u, m_c = out.chunk(2)
        return m_c, m_u
