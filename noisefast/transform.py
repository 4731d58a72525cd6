"""D (denoise), I (invert) and F = I∘D over a batch of candidate latents, for either sampler.

1. D(ε; c):  x_T = ε, then for each denoising move (t, ᾱ_from → ᾱ_to) of the schedule
             x ← ddim_move(x, m_c, ᾱ_from, ᾱ_to, m_u, w_d)     with (m_c, m_u) = guided model outputs at t
   (a `FlowSchedule`'s moves are (t, σ_from → σ_to) and the move is Euler's x ← x + (σ_to − σ_from)·v)
2. I(x₀; c): the same over the inversion moves with guidance w_i
3. F(ε) = I(D(ε))

Guidance (`noisefast.denoisers.guidance`): D follows diffusers' pipeline (``DENOISE_RULE``: CFG only when
w_d > 1, else the conditional half alone); I mixes for every scale (``INVERSION_RULE``):
m = m_u + w_i·(m_c − m_u), so w_i = 1 (the default, the paper's) is the conditional inversion, w_i = 0 the
unconditional one (one half each), and any other w_i runs the ``[uncond; cond]`` pair.

Candidates are processed in chunks of at most ``max_batch`` (the denoiser sees ``2·max_batch`` rows
when a step runs both halves). Gradients: when none is wanted (grad mode off, or neither the latent nor a condition
tensor requires grad) everything runs under ``torch.inference_mode`` — the results are then inference
tensors, not usable in a later autograd graph. When one is wanted, autograd flows through every
denoiser call and move; ``checkpoint=True`` checkpoints each (call + move): only the latent entering
each step is saved and the call is recomputed in backward. When only the latent needs a gradient (the
condition tensors do not require grad), a step runs without recording in forward — on whatever backend the
denoiser runs (ONNX Runtime, TensorRT, ``torch.compile``) — and its backward re-runs it on the torch UNet and
takes the vector-Jacobian product w.r.t. the latent (`_RecomputedStep`: compiled forward + torch backward, no
per-activation hooks, no parameter gradients); otherwise each step goes through ``torch.utils.checkpoint``
(non-reentrant) or plain autograd, on the torch UNet (`noisefast.denoisers.base.autograd_denoiser`). The denoiser must be deterministic (eval mode) for the recomputation to match.
Use ``torch.autograd.grad(loss, noise)`` (not ``loss.backward()``) to skip the frozen model's parameter
gradients.
"""

from __future__ import annotations

from dataclasses import fields

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from noisefast import ops
from noisefast.defaults import DEFAULT_GUIDANCE_SCALE, DEFAULT_INVERSION_GUIDANCE_SCALE
from noisefast.denoisers.base import Condition, Denoiser, autograd_denoiser, wants_grad
from noisefast.denoisers.guidance import (DENOISE_RULE, INVERSION_RULE, GuidedDenoiser, check_condition_batch,
                                         check_guidance_scale)
from noisefast.flow_schedule import Schedule, check_schedule
from noisefast.schedule import Move



def denoise(
    den: Denoiser,
    sched: Schedule,
    noise: torch.Tensor,  # [B, C, H, W] ε = x_T
    cond: Condition,  # batch B or 1
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    *,
    max_batch: int | None = None,
    return_intermediates: bool = False,
    checkpoint: bool = False,
    on_move=None,  # called with no arguments after each denoising move of each chunk (progress)
):  # [B, C, H, W] x₀; with return_intermediates: (x₀, [N+1, B, C, H, W] latents x_T … x₀)
    """D: the denoising loop of ``sched`` (as ``DDIMScheduler`` / ``FlowMatchEulerDiscreteScheduler``), guided with ``guidance_scale`` as
    diffusers' pipeline does (> 1: ``[uncond; cond]``; ≤ 1: the conditional half only)."""
    phases = [("denoise_moves", check_guidance_scale(guidance_scale), DENOISE_RULE)]
    return _run(den, sched, noise, cond, phases, max_batch, return_intermediates, checkpoint, on_move=on_move)


def invert(
    den: Denoiser,
    sched: Schedule,
    x0: torch.Tensor,  # [B, C, H, W] clean latent
    cond: Condition,  # batch B or 1
    guidance_scale: float = DEFAULT_INVERSION_GUIDANCE_SCALE,
    *,
    max_batch: int | None = None,
    return_intermediates: bool = False,
    checkpoint: bool = False,
):  # [B, C, H, W] x_T; with return_intermediates: (x_T, [N'+1, B, C, H, W] latents x₀ … x_T)
    """I: the inversion loop of ``sched`` (as ``DDIMInverseScheduler``; Euler with σ ascending) on m = m_u + w·(m_c − m_u),
    ``w = guidance_scale``, for every w: 1 → conditional only, 0 → unconditional only (one call each)."""
    phases = [("invert_moves", check_guidance_scale(guidance_scale), INVERSION_RULE)]
    return _run(den, sched, x0, cond, phases, max_batch, return_intermediates, checkpoint, name="x0")


def transform(
    den: Denoiser,
    sched: Schedule,
    noise: torch.Tensor,  # [B, C, H, W] ε
    cond: Condition,  # batch B or 1
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    inversion_guidance_scale: float = DEFAULT_INVERSION_GUIDANCE_SCALE,
    *,
    max_batch: int | None = None,
    return_intermediates: bool = False,
    checkpoint: bool = False,
):  # [B, C, H, W] F(ε); with return_intermediates: (F(ε), [N+N'+1, B, C, H, W] latents ε … x₀ … F(ε))
    """F = I∘D, each chunk of candidates denoised and inverted before the next starts (guidance as in
    `denoise` and `invert`)."""
    phases = [
        ("denoise_moves", check_guidance_scale(guidance_scale), DENOISE_RULE),
        ("invert_moves", check_guidance_scale(inversion_guidance_scale, "inversion_guidance_scale"), INVERSION_RULE),
    ]
    return _run(den, sched, noise, cond, phases, max_batch, return_intermediates, checkpoint)


def _cond_requires_grad(cond: Condition) -> bool:
    return any(v.requires_grad for f in fields(Condition) if (v := getattr(cond, f.name)) is not None)


def check_latents(x: torch.Tensor, den: Denoiser, name: str = "noise") -> None:
    """``x`` must be a floating ``[B, C, H, W]`` tensor with the denoiser's channel count (if it has one)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a [B, C, H, W] latent batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    channels = getattr(den, "in_channels", None)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels but the denoiser expects {channels}: shape {tuple(x.shape)}")


def check_max_batch(max_batch) -> int | None:
    if max_batch is None:
        return None
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int or None, got {max_batch!r}")
    return max_batch


def _run(den, sched, x, cond, phases, max_batch, return_intermediates, use_checkpoint, name="noise", on_move=None):
    """Validate, then run the phases (schedule attribute naming the moves, guidance) chunk by chunk."""
    check_schedule(sched)
    check_latents(x, den, name)
    for moves, _, _ in phases:
        if not getattr(sched, moves):  # an inversion-only schedule (num_steps=0)
            raise ValueError(f"sched has no {moves[:-6]} steps: it was built with num_steps=0 (inversion only)")
    B = x.shape[0]
    check_condition_batch(cond, B)
    step = check_max_batch(max_batch) or B
    grad = wants_grad(x, cond)
    checkpointed = None  # how a step is checkpointed (None: plain autograd or no autograd)
    recomputed = use_checkpoint and grad and not _cond_requires_grad(cond)
    if use_checkpoint and grad:
        checkpointed = _RecomputedStep.apply if recomputed else _checkpoint_step
    if grad and not recomputed:
        den = autograd_denoiser(den)  # autograd records every call: the torch UNet (a compiled forward has no graph)
    outs, trajs = [], []
    with torch.inference_mode(not grad):
        for lo in range(0, B, step):
            idx = slice(lo, min(lo + step, B))
            xc = x[idx]
            cc = cond.index(idx) if cond.batch_size == B and B != 1 else cond
            keep = [xc] if return_intermediates else None
            for moves, w, rule in phases:
                guided = GuidedDenoiser(den, cc, xc.shape[0], w, rule)
                xc = _run_moves(guided, getattr(sched, moves), xc, sched, keep, checkpointed, on_move)
            outs.append(xc)
            if keep is not None:
                trajs.append(torch.stack(keep))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    if not return_intermediates:
        return out
    return out, (torch.cat(trajs, dim=1) if len(trajs) > 1 else trajs[0])


def _run_moves(
    guided: GuidedDenoiser,
    moves: tuple[Move, ...],
    x: torch.Tensor,  # [b, C, H, W]
    sched: Schedule,
    keep: list | None,
    checkpointed,  # None, _RecomputedStep.apply or _checkpoint_step
    on_move=None,
) -> torch.Tensor:  # [b, C, H, W]
    for move in moves:
        x = (checkpointed or _step)(guided, move, x, sched)
        if keep is not None:
            keep.append(x)
        if on_move is not None:
            on_move()
    return x


def _step(guided: GuidedDenoiser, move: Move, x: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """One guided move: (m_c, m_u) = guided(x, t);  x' = ddim_move(x, m_c, c_from, c_to, m_u, w) with the move's
    coefficient pair — (ᾱ_from, ᾱ_to) for DDIM, (σ_from, σ_to) for the flow-matching Euler move."""
    m_c, m_u = guided(x, move.t)
    c_from, c_to = move.coefficients
    return ops.ddim_move(
        x,
        m_c,
        c_from,
        c_to,
        model_out_uncond=m_u,
        guidance_scale=guided.guidance_scale,
        prediction_type=sched.prediction_type,
        clip_sample_range=sched.clip_sample_range,
    )


def _checkpoint_step(guided: GuidedDenoiser, move: Move, x: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """`_step` under ``torch.utils.checkpoint`` (non-reentrant): gradients reach condition tensors too."""
    return _checkpoint(_step, guided, move, x, sched, use_reentrant=False)


class _RecomputedStep(torch.autograd.Function):
    """`_step` checkpointed for a gradient w.r.t. the latent only: compiled forward, torch backward.

    forward:  x' = step(x) without recording (autograd Functions run their forward in no-grad mode), on the
              denoiser as given — ONNX Runtime, TensorRT, ``torch.compile`` or ``auto`` included;
              saves x — one latent — and the autocast state.
    backward: re-run x' = step(x) with autograd on the torch UNet (`autograd_denoiser`) under that autocast
              state, return ∂L/∂x = (∂x'/∂x)ᵀ·∂L/∂x'.
    The gradient is the torch UNet's Jacobian at the latents the forward backend produced: it differs from the
    all-torch gradient only by the two runtimes' rounding of those latents (tests/test_autograd_backends.py).
    Compared with ``torch.utils.checkpoint`` (non-reentrant) no Python hook runs per saved activation, and
    the frozen model's parameter gradients are not computed.
    """

    @staticmethod
    def forward(ctx, guided, move, x, sched):  # x [b, C, H, W] → [b, C, H, W]
        ctx.save_for_backward(x)
        ctx.step = (guided, move, sched)
        device_type = x.device.type
        ctx.autocast = dict(device_type=device_type, enabled=torch.is_autocast_enabled(device_type),
                            dtype=torch.get_autocast_dtype(device_type))
        return _step(guided, move, x, sched)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # ∂L/∂x' [b, C, H, W] → ∂L/∂x
        (x,) = ctx.saved_tensors
        guided, move, sched = ctx.step
        with torch.enable_grad(), torch.autocast(**ctx.autocast):
            x = x.detach().requires_grad_(True)
            out = _step(guided.for_autograd(), move, x, sched)
        (grad_x,) = torch.autograd.grad(out, x, grad_out)
        return None, None, grad_x, None
