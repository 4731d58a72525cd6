"""Inversion stability (Definition 1).

    s(ε) = cos(vec(ε), vec(F(ε))),   F = I∘D   (one score per sample, cosine over the flattened latent)

Selection over many seeds (Algorithm 1) is `noisefast.selection`; packing rows of many prompts into
shared UNet batches is `noisefast.batching`.
"""

from __future__ import annotations

import torch

from noisefast import ops
from noisefast.defaults import DEFAULT_GUIDANCE_SCALE, DEFAULT_INVERSION_GUIDANCE_SCALE
from noisefast.denoisers.base import Condition, Denoiser
from noisefast.flow_schedule import Schedule
from noisefast.transform import transform


def stability_score(
    den: Denoiser,
    sched: Schedule,
    noise: torch.Tensor,  # [B, C, H, W] ε
    cond: Condition,  # batch B or 1
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    inversion_guidance_scale: float = DEFAULT_INVERSION_GUIDANCE_SCALE,
    *,
    max_batch: int | None = None,
    checkpoint: bool = False,
) -> torch.Tensor:  # [B] s(ε), float32 (float64 for float64 noise)
    """Definition 1: s(ε) = cos(ε, F(ε)) per sample; differentiable in ``noise`` when it requires grad.

    16-bit latents are compared in float32 (a sum of squares over a 4×128×128 latent overflows fp16).
    """
    back = transform(
        den, sched, noise, cond, guidance_scale, inversion_guidance_scale, max_batch=max_batch, checkpoint=checkpoint
    )
    if noise.dtype in (torch.float16, torch.bfloat16):
        return ops.cosine_similarity(noise.float(), back.float())
    return ops.cosine_similarity(noise, back)
