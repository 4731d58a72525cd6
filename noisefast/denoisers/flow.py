"""The `Denoiser` protocol over the flow-matching transformers: SD3 / SD3.5 (MMDiT) and FLUX.1.

Both return the *velocity* v ≈ ε − x₀ (`noisefast.flow_schedule`), called exactly as their diffusers pipelines
call them, for the conditioning given (classifier-free guidance stays `noisefast.denoisers.guidance`'s job):

- `SD3Denoiser` (``SD3Transformer2DModel``, ``StableDiffusion3Pipeline``): ``hidden_states`` = the latent
  [B, C, H, W], ``timestep`` = t (float32, σ·1000), ``encoder_hidden_states`` = the joint CLIP ‖ T5 text
  sequence, ``pooled_projections`` = the pooled CLIP embeddings.
- `FluxDenoiser` (``FluxTransformer2DModel``, ``FluxPipeline``): the latent is packed into 2×2 patches
  ([B, C, H, W] → [B, H/2·W/2, 4C], the pipeline's ``_pack_latents``) and the output unpacked again, so the
  engine keeps working on the [B, C, H, W] latent the pipeline draws before it packs (packing is a
  permutation: cosines, Euler moves and seeds are unchanged by it). ``timestep`` = t in the latent dtype / 1000,
  ``txt_ids`` = zeros [L, 3], ``img_ids`` = the pipeline's ``_prepare_latent_image_ids`` (RoPE positions),
  ``guidance`` = ``Condition.guidance`` for guidance-distilled models (``guidance_embeds``, FLUX.1-dev) and
  nothing for FLUX.1-schnell.

Inputs are cast to the model's device and dtype, the output comes back in the latent's device and dtype.
"""

from __future__ import annotations

import torch

from noisefast.denoisers.base import Condition
from noisefast.denoisers.placement import Placed, Placement


class _TransformerDenoiser(Placed):
    """What both transformer denoisers share: the module, its placement, input checks and casts."""

    model_name = "transformer"

    def __init__(self, transformer):
        config = getattr(transformer, "config", None)
        if config is None or not hasattr(config, "in_channels") or not callable(transformer):
            raise TypeError(f"transformer must be a diffusers {self.model_name}, got {type(transformer).__name__}")
        self.transformer = transformer
        self._placed = Placement(transformer)

    def _inputs(self, x: torch.Tensor, t, cond: Condition) -> tuple[torch.Tensor, torch.Tensor, Condition]:
        """(x, t [B], cond) checked and placed: x and cond in the model's device/dtype, t float32 on its device."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"latent must be [B, {self.in_channels}, H, W] for this {self.model_name}, "
                             f"got shape {tuple(x.shape)}")  # fmt: skip
        B = x.shape[0]
        device, dtype = self._placed()
        t = torch.as_tensor(t, device=device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"timesteps must be [B={B}] or a scalar, got shape {tuple(t.shape)}")
        if cond.pooled_prompt_embeds is None:
            raise ValueError(f"this {self.model_name} needs Condition.pooled_prompt_embeds")
        return x.to(device=device, dtype=dtype), t, cond.expand(B).to(device=device, dtype=dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.transformer).__name__}, in_channels={self.in_channels}, dtype={self.dtype})"


class SD3Denoiser(_TransformerDenoiser):
    """``v = den(x, t, cond)`` over an ``SD3Transformer2DModel`` (SD3, SD3.5 Medium/Large/Large-Turbo)."""

    model_name = "SD3Transformer2DModel"

    @property
    def in_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W]
        t: torch.Tensor,  # [B] (or 0-d) timesteps σ·1000
        cond: Condition,  # batch B or 1
    ) -> torch.Tensor:  # [B, C, H, W] velocity, in x's dtype and device
        xm, t, cond = self._inputs(x, t, cond)
        if cond.guidance is not None:
            raise ValueError("SD3 transformers have no guidance embedding: Condition.guidance must be None")
        out = self.transformer(hidden_states=xm, timestep=t, encoder_hidden_states=cond.prompt_embeds,
                               pooled_projections=cond.pooled_prompt_embeds, return_dict=False)[0]  # fmt: skip
        return out.to(device=x.device, dtype=x.dtype)


class FluxDenoiser(_TransformerDenoiser):
    """``v = den(x, t, cond)`` over a ``FluxTransformer2DModel`` (FLUX.1-schnell, FLUX.1-dev), on unpacked latents."""

    model_name = "FluxTransformer2DModel"

    @property
    def in_channels(self) -> int:
        """Latent channels before packing (the transformer sees 4× that: 2×2 patches)."""
        return int(self.transformer.config.in_channels) // 4

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W] (H, W even)
        t: torch.Tensor,  # [B] (or 0-d) timesteps σ·1000
        cond: Condition,  # batch B or 1; .guidance [B] for guidance-distilled models
    ) -> torch.Tensor:  # [B, C, H, W] velocity, in x's dtype and device
        from diffusers import FluxPipeline

        xm, t, cond = self._inputs(x, t, cond)
        B, C, H, W = xm.shape
        if H % 2 or W % 2:
            raise ValueError(f"FLUX packs 2×2 latent patches: latent height and width must be even, got {H}×{W}")
        if self.guidance_embeds and cond.guidance is None:
            raise ValueError("this FLUX transformer is guidance-distilled (guidance_embeds, FLUX.1-dev): it needs "
                             "Condition.guidance, the guidance scale it embeds")  # fmt: skip
        if not self.guidance_embeds and cond.guidance is not None:
            raise ValueError("this FLUX transformer has no guidance embedding (FLUX.1-schnell): Condition.guidance "
                             "must be None")  # fmt: skip
        packed = FluxPipeline._pack_latents(xm, B, C, H, W)  # [B, H/2·W/2, 4C]
        img_ids = FluxPipeline._prepare_latent_image_ids(B, H // 2, W // 2, xm.device, xm.dtype)  # [H/2·W/2, 3]
        txt_ids = torch.zeros(cond.prompt_embeds.shape[1], 3, device=xm.device, dtype=xm.dtype)  # [L, 3]
        # FluxPipeline: timestep = t.to(latents.dtype) / 1000 (the transformer multiplies by 1000 again)
        out = self.transformer(hidden_states=packed, timestep=t.to(xm.dtype) / 1000, guidance=cond.guidance,
                               pooled_projections=cond.pooled_prompt_embeds, encoder_hidden_states=cond.prompt_embeds,
                               txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]  # fmt: skip
        return FluxPipeline._unpack_latents(out, H, W, 1).to(device=x.device, dtype=x.dtype)  # [B, C, H, W]


__all__ = ["FluxDenoiser", "SD3Denoiser"]
