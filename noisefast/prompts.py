"""Prompt → `Condition`, exactly as the model's own pipeline would encode it.

- `SDXLPromptEncoder` calls diffusers' `StableDiffusionXLPipeline.encode_prompt` (both text encoders,
  penultimate hidden states concatenated, the pooled output of text encoder 2, negative prompts,
  ``force_zeros_for_empty_prompt``) and `_get_add_time_ids` (original size, crop, target size), so the
  condition is bit-for-bit the one a stock pipeline feeds its UNet.
- `CLIPPromptEncoder` serves single-encoder models (the built-in pixel models): one CLIP text encoder,
  the prompt put through the model's template, the empty prompt as the unconditional half.
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
