"""`UNetDenoiser`: the `Denoiser` protocol over a diffusers ``UNet2DConditionModel``.

Calls the UNet the way diffusers' pipelines do: ``encoder_hidden_states=prompt_embeds``, plus SDXL's
``added_cond_kwargs={"text_embeds": pooled_prompt_embeds, "time_ids": time_ids}`` when the UNet's
``addition_embed_type`` is ``"text_time"``. Inputs are cast to the UNet's device and dtype, the output
comes back in the latent's device and dtype (so an fp16 UNet can serve fp32 latents).
"""

from __future__ import annotations

import torch

from noisefast.denoisers.base import Condition
from noisefast.denoisers.placement import Placed, Placement

SUPPORTED_ADDITION_EMBED_TYPES = (None, "text_time")


class UNetDenoiser(Placed):
    """``model_out = den(x, t, cond)`` over a ``UNet2DConditionModel`` (SDXL, SDXL-Turbo, SD-style UNets)."""

    def __init__(self, unet):
        config = getattr(unet, "config", None)
        if config is None or not hasattr(config, "in_channels") or not callable(unet):
            raise TypeError(f"unet must be a diffusers UNet2DConditionModel, got {type(unet).__name__}")
        embed_type = getattr(config, "addition_embed_type", None)
        if embed_type not in SUPPORTED_ADDITION_EMBED_TYPES:
            raise ValueError(
                f"unsupported UNet addition_embed_type {embed_type!r}; supported: {SUPPORTED_ADDITION_EMBED_TYPES}"
            )
        if getattr(config, "time_cond_proj_dim", None) is not None:
            raise ValueError(
                "UNets with a guidance embedding (time_cond_proj_dim, LCM-distilled) are not supported: "
                "they take the guidance scale as an input instead of classifier-free guidance"
            )
        self.unet = unet
        self.text_time = embed_type == "text_time"
        self._placed = Placement(unet)  # diffusers' unet.device/.dtype, read once per placement

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def sample_size(self) -> int | tuple[int, int] | None:
        """The UNet's default latent size (``config.sample_size``)."""
        return self.unet.config.sample_size

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W]
        t: torch.Tensor,  # [B] (or 0-d / int, broadcast) timesteps
        cond: Condition,  # batch B or 1
    ) -> torch.Tensor:  # [B, C, H, W] in x's dtype and device
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"latent must be [B, {self.in_channels}, H, W] for this UNet, got shape {tuple(x.shape)}"
            )
        B = x.shape[0]
        device, dtype = self._placed()
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"timesteps must be [B={B}] or a scalar, got shape {tuple(t.shape)}")
        cond = cond.expand(B).to(device=device, dtype=dtype)
        kwargs = {}
        if self.text_time:
            if cond.pooled_prompt_embeds is None or cond.time_ids is None:
                raise ValueError(
                    "this UNet (addition_embed_type='text_time', SDXL) needs Condition.pooled_prompt_embeds and time_ids"
                )
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled_prompt_embeds, "time_ids": cond.time_ids}
        out = self.unet(
            x.to(device=device, dtype=dtype),
            t,
            encoder_hidden_states=cond.prompt_embeds,
            return_dict=False,
            **kwargs,
        )[0]
        return out.to(device=x.device, dtype=x.dtype)

    def __repr__(self) -> str:
        return f"UNetDenoiser({type(self.unet).__name__}, in_channels={self.in_channels}, dtype={self.dtype})"
