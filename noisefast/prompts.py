"""Prompt → `Condition`, exactly as the model's own pipeline would encode it.

- `SDXLPromptEncoder` calls diffusers' `StableDiffusionXLPipeline.encode_prompt` (both text encoders,
  penultimate hidden states concatenated, the pooled output of text encoder 2, negative prompts,
  ``force_zeros_for_empty_prompt``) and `_get_add_time_ids` (original size, crop, target size), so the
  condition is bit-for-bit the one a stock pipeline feeds its UNet.
- `CLIPPromptEncoder` serves single-encoder models (the built-in pixel models): one CLIP text encoder,
  the prompt put through the model's template, the empty prompt as the unconditional half.
- `SD3PromptEncoder` calls `StableDiffusion3Pipeline.encode_prompt` (CLIP-L and CLIP-G penultimate states
  padded to T5's width, ‖ the T5 sequence, pooled CLIP-L ‖ CLIP-G; the negative prompt, "" by default).
- `FluxPromptEncoder` calls `FluxPipeline.encode_prompt` (T5 sequence, pooled CLIP); the unconditional half —
  used only where an inversion mix w_i ≠ 1 or true CFG needs it — is the negative prompt ("" by default) encoded
  the same way, as FluxPipeline's true-CFG path does.

Text length: every encoder pads to its pipeline's fixed length (CLIP 77 tokens; SD3's T5 256 and FLUX's T5 512,
the pipelines' ``max_sequence_length`` defaults), exactly as the stock pipelines do, so the conditions of any two
prompts have equal shapes and their rows share transformer batches (`noisefast.batching`); padding is what the
model was run with, not an approximation.
"""

from __future__ import annotations

import torch

from noisefast.denoisers.base import Condition


def _as_list(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompt must be a string or a non-empty list of strings, got {prompts!r}")
    return prompts


class SDXLPromptEncoder:
    """Encodes prompts with a `StableDiffusionXLPipeline`'s own ``encode_prompt`` and time-id logic."""

    def __init__(self, pipe):
        self.pipe = pipe

    @torch.no_grad()
    def __call__(
        self,
        prompts,
        negative_prompt: str | None = None,
        *,
        height: int,
        width: int,
        with_negative: bool = True,
        device: torch.device | None = None,
    ) -> Condition:
        """Condition of batch P = len(prompts); ``with_negative`` adds the unconditional half (CFG)."""
        pipe = self.pipe
        prompts = _as_list(prompts)
        device = device or pipe.unet.device
        negative = None if negative_prompt is None else [negative_prompt] * len(prompts)
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=prompts,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=with_negative,
            negative_prompt=negative,
        )
        # time_ids = original_size + crops_coords_top_left + target_size, as the pipeline's __call__ builds them
        projection_dim = int(pipe.text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=pe.dtype, text_encoder_projection_dim=projection_dim
        ).to(device)  # [1, 6]
        return Condition(
            prompt_embeds=pe,  # [P, 77, 2048]
            pooled_prompt_embeds=pooled,  # [P, 1280]
            time_ids=time_ids,
            negative_prompt_embeds=npe if with_negative else None,
            negative_pooled_prompt_embeds=npooled if with_negative else None,
        )


class CLIPPromptEncoder:
    """One CLIP text encoder (the built-in pixel models): the prompt as given, the model's empty prompt as
    the unconditional half, both encoded as in training (`noisefast.builtin.prompts.encode_prompts`)."""

    def __init__(self, tokenizer, text_encoder, unconditional_prompt: str = ""):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.unconditional_prompt = unconditional_prompt

    @torch.no_grad()
    def embed(self, texts: list[str], device: torch.device) -> torch.Tensor:  # [P, L, D]
        from noisefast.builtin.prompts import encode_prompts

        return encode_prompts(self.tokenizer, self.text_encoder, texts).to(device)

    def __call__(
        self,
        prompts,
        negative_prompt: str | None = None,
        *,
        height: int,
        width: int,
        with_negative: bool = True,
        device: torch.device | None = None,
    ) -> Condition:
        del height, width  # no size conditioning in single-encoder models
        prompts = _as_list(prompts)
        device = device or self.text_encoder.device
        pe = self.embed(prompts, device)  # [P, L, D]
        npe = None
        if with_negative:
            neg = self.unconditional_prompt if negative_prompt is None else negative_prompt
            npe = self.embed([neg], device).expand(len(prompts), -1, -1)  # [P, L, D]
        return Condition(prompt_embeds=pe, negative_prompt_embeds=npe)


class SD3PromptEncoder:
    """Encodes prompts with a `StableDiffusion3Pipeline`'s own ``encode_prompt`` (two CLIP + T5)."""

    def __init__(self, pipe):
        self.pipe = pipe

    @torch.no_grad()
    def __call__(self, prompts, negative_prompt: str | None = None, *, height: int, width: int,
                 with_negative: bool = True, device: torch.device | None = None) -> Condition:  # fmt: skip
        """Condition of batch P = len(prompts); ``with_negative`` adds the unconditional half (the negative
        prompt, "" when none is given — the pipeline's default)."""
        del height, width  # SD3 has no size conditioning
        prompts = _as_list(prompts)
        negative = None if negative_prompt is None else [negative_prompt] * len(prompts)
        pe, npe, pooled, npooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=device or self.pipe.transformer.device,
            do_classifier_free_guidance=with_negative, negative_prompt=negative,
        )  # fmt: skip
        return Condition(prompt_embeds=pe, pooled_prompt_embeds=pooled,  # [P, 77 + 256, D], [P, P_clip]
                         negative_prompt_embeds=npe if with_negative else None,
                         negative_pooled_prompt_embeds=npooled if with_negative else None)  # fmt: skip


class FluxPromptEncoder:
    """Encodes prompts with a `FluxPipeline`'s own ``encode_prompt`` (T5 sequence, pooled CLIP)."""

    def __init__(self, pipe):
        self.pipe = pipe

    @torch.no_grad()
    def __call__(self, prompts, negative_prompt: str | None = None, *, height: int, width: int,
                 with_negative: bool = True, device: torch.device | None = None) -> Condition:  # fmt: skip
        """Condition of batch P = len(prompts); ``with_negative`` adds the negative prompt ("" by default)."""
        del height, width  # FLUX has no size conditioning (the image size enters through RoPE ids and μ)
        prompts = _as_list(prompts)
        device = device or self.pipe.transformer.device
        pe, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device)  # text_ids: zeros
        npe = npooled = None
        if with_negative:
            neg = [negative_prompt or ""] * len(prompts)
            npe, npooled, _ = self.pipe.encode_prompt(prompt=neg, prompt_2=None, device=device)
        return Condition(prompt_embeds=pe, pooled_prompt_embeds=pooled,  # [P, 512, D], [P, P_clip]
                         negative_prompt_embeds=npe, negative_pooled_prompt_embeds=npooled)  # fmt: skip
