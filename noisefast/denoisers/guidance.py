"""Classifier-free guidance: which halves of ``[uncond; cond]`` a step runs, and how they combine.

Two named rules turn a scale ``w`` into a `Guidance` (the halves to run; the fused ``ddim_move`` does the
combine ``m = m_u + w·(m_c − m_u)`` when both run):

* ``"diffusers"`` — the denoising rule, diffusers' SDXL pipeline (``do_classifier_free_guidance``): guide
  only when ``w > 1``, running the UNet once on ``[negative; positive]`` (negative first, split with
  ``chunk(2)``); at ``w ≤ 1`` (SDXL-Turbo's 0.0) run the conditional half alone and ignore ``w``.
* ``"mix"`` — the inversion rule: ``m = m_u + w·(m_c − m_u)`` for every finite ``w``, as the paper authors'
  lab code inverts (Golden-Noise/NPNet data collection, Z-Sampling: always the pair, scale applied).
  ``w = 1`` is exactly conditional-only and ``w = 0`` exactly unconditional-only (only that half runs:
  it is the same number, for half the work); any other ``w`` (0.5, 1.5, −1, …) runs the pair. So the
  inversion default 1.0 (the paper's) is the conditional inversion, and Z-Sampling's 0 the unconditional one.

`transform.denoise` uses ``DENOISE_RULE``, `transform.invert` ``INVERSION_RULE`` (so do `stability_score`
and `optimize_noise`, through `transform.transform`). `describe_inversion_guidance` says in words what an
inversion scale does; `needs_negative` says whether a condition needs its unconditional half at all.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, fields

import torch

from noisefast.denoisers.base import Condition, Denoiser, autograd_denoiser

GUIDANCE_RULES = ("diffusers", "mix")
DENOISE_RULE = "diffusers"  # D: diffusers' pipeline (w ≤ 1 → conditional only)
INVERSION_RULE = "mix"  # I: m = m_u + w·(m_c − m_u) for every w (0 → unconditional, 1 → conditional)


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


@dataclass(frozen=True)
class Guidance:
    """What one guided step runs: the conditional half, the unconditional half, or both (then combined).

    ``m = m_c`` (``cond`` only), ``m = m_u`` (``uncond`` only), ``m = m_u + w·(m_c − m_u)`` (both).
    """

    scale: float  # w (used only when both halves run)
    rule: str  # "diffusers" or "mix"
    cond: bool  # the conditional half runs
    uncond: bool  # the unconditional half runs

    @classmethod
    def of(cls, scale, rule: str = DENOISE_RULE, name: str = "guidance_scale") -> "Guidance":
        """The halves ``rule`` runs for scale ``w`` (see the module docstring)."""
        w = check_guidance_scale(scale, name)
        if rule == "diffusers":  # StableDiffusionXLPipeline: CFG iff w > 1, else conditional only (w ignored)
            return cls(w, rule, cond=True, uncond=do_classifier_free_guidance(w))
        if rule == "mix":  # m_u + w·(m_c − m_u): w = 1 → m_c, w = 0 → m_u (one half suffices)
            return cls(w, rule, cond=w != 0.0, uncond=w != 1.0)
        raise ValueError(f"guidance rule must be one of {GUIDANCE_RULES}, got {rule!r}")

    @property
    def mode(self) -> str:
        """``"conditional"``, ``"unconditional"`` or ``"guided"`` (both halves, mixed with ``scale``)."""
        if self.cond and self.uncond:
            return "guided"
        return "conditional" if self.cond else "unconditional"

    def describe(self) -> str:
        """``"conditional"``, ``"unconditional"`` or ``"guided (w=0.5)"``: for reports and the CLI."""
        return f"guided (w={self.scale:g})" if self.mode == "guided" else self.mode


def describe_inversion_guidance(inversion_guidance_scale) -> str:
    """What an inversion guidance scale means: ``"conditional"`` (1), ``"unconditional"`` (0), ``"guided (w=…)"``."""
    return Guidance.of(inversion_guidance_scale, INVERSION_RULE, "inversion_guidance_scale").describe()


def describe_guidance(guidance_scale) -> str:
    """Likewise for a denoising scale (diffusers' rule: ``"conditional"`` for every ``w ≤ 1``)."""
    return Guidance.of(guidance_scale, DENOISE_RULE).describe()


def needs_negative(guidance_scale, inversion_guidance_scale) -> bool:
    """Whether denoising with ``guidance_scale`` or inverting with ``inversion_guidance_scale`` runs the
    unconditional half, i.e. whether the condition needs its negative (unconditional) embeddings:
    ``guidance_scale > 1 or inversion_guidance_scale != 1``."""
    return (Guidance.of(guidance_scale, DENOISE_RULE).uncond
            or Guidance.of(inversion_guidance_scale, INVERSION_RULE, "inversion_guidance_scale").uncond)


def check_condition_batch(cond: Condition, batch: int) -> None:
    """The condition must have batch 1 (broadcast) or exactly ``batch``."""
    if not isinstance(cond, Condition):
        raise TypeError(f"cond must be a noisefast Condition, got {type(cond).__name__}")
    if cond.batch_size not in (1, batch):
        raise ValueError(f"condition batch {cond.batch_size} does not match the latent batch {batch} (nor is it 1)")


class GuidedDenoiser:
    """``(m, m_u | None) = guided(x, t)``: the model output(s) one DDIM move needs, for a fixed condition,
    scale and rule.

    Both halves: one denoiser call on ``[negative; positive]`` (``2·batch`` rows) → ``(m_c, m_u)``, which the
    fused ``ddim_move`` mixes as ``m_u + w·(m_c − m_u)``. One half: one call on that half (``batch`` rows)
    → ``(m_c, None)`` or ``(m_u, None)``, used as is. The denoiser-batch condition is built once here, not at
    every step. Missing negative prompts are zeros, as SDXL's ``force_zeros_for_empty_prompt`` does (see
    `Condition.negative`).
    """

    def __init__(self, den: Denoiser, cond: Condition, batch: int, guidance_scale: float, rule: str = DENOISE_RULE,
                 name: str = "guidance_scale"):
        check_condition_batch(cond, batch)
        self.den = den
        self._autograd: GuidedDenoiser | None = None
        self.guidance = Guidance.of(guidance_scale, rule, name)
        self.guidance_scale = self.guidance.scale
        self.cfg = self.guidance.mode == "guided"  # both halves in one call
        self.batch = batch
        if self.cfg:
            self.cond = Condition.concat([cond.negative().expand(batch), cond.positive().expand(batch)])
        elif self.guidance.cond:
            self.cond = cond.positive().expand(batch)
        else:
            self.cond = cond.negative().expand(batch)
        # materialised once: a runtime that needs contiguous inputs (ONNX Runtime, TensorRT) would copy a
        # broadcast [B, L, D] view at every step otherwise
        self.cond = self.cond._map(lambda v: v.contiguous())

    def for_autograd(self) -> "GuidedDenoiser":
        """The same guided step on the denoiser gradients go through (`noisefast.denoisers.base.autograd_denoiser`)."""
        twin = autograd_denoiser(self.den)
        if twin is self.den:
            return self
        if self._autograd is None:
            self._autograd = copy.copy(self)
            self._autograd.den, self._autograd._autograd = twin, None
        return self._autograd

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W]
        t: int | float,  # the timestep of this move (int: DDIM; float: flow matching, σ·T)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # m_c (or the one half's m) [B, C, H, W], m_u [B, C, H, W] or None
        if x.shape[0] != self.batch:
            raise ValueError(f"latent batch {x.shape[0]} does not match the guided batch {self.batch}")
        if not self.cfg:  # one half: m = m_c or m = m_u
            return self.den(x, _timesteps(t, self.batch, x.device), self.cond), None
        # one call on [uncond; cond], diffusers' order; chunk(2) → (m_u, m_c)
        out = self.den(torch.cat([x, x]), _timesteps(t, 2 * self.batch, x.device), self.cond)
        m_u, m_c = out.chunk(2)
        return m_c, m_u


def _timesteps(t: int | float, n: int, device) -> torch.Tensor:  # [n]
    """``t`` for every row: int64 for DDIM's integer timesteps, float32 for the flow schedules' σ·T (the float32
    values diffusers' ``FlowMatchEulerDiscreteScheduler.timesteps`` hold, passed exactly)."""
    return torch.full((n,), t, dtype=torch.float32 if isinstance(t, float) else torch.long, device=device)
