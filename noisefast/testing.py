"""Tiny SDXL-architecture components with random weights, for tests and CPU benchmarks.

Same code paths as the real models (UNet2DConditionModel with SDXL's ``text_time`` added
conditioning), a few hundred kilobytes of weights. Nothing here touches the hub.
"""

from __future__ import annotations

import torch

# SDXL's UNet, shrunk: two resolutions, linear-projection transformers, text_time added conditioning.
TINY_POOLED_DIM = 32
TINY_TIME_EMBED_DIM = 8
TINY_CROSS_DIM = 64
TINY_UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    transformer_layers_per_block=(1, 1),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TINY_TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=6 * TINY_TIME_EMBED_DIM + TINY_POOLED_DIM,
    cross_attention_dim=TINY_CROSS_DIM,
    norm_num_groups=8,
)


def tiny_unet(seed: int = 0, **overrides):
    """A random-weight SDXL-architecture ``UNet2DConditionModel`` (eval mode, fp32)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**TINY_UNET_CONFIG, **overrides}).eval()


def tiny_condition(batch: int = 1, seq_len: int = 7, seed: int = 0, negative: bool = True):
    """A random SDXL-shaped `Condition` for the tiny UNet."""
    from noisefast.denoisers.base import Condition

    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    time_ids = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]).expand(batch, 6)
    return Condition(
        prompt_embeds=r(batch, seq_len, TINY_CROSS_DIM),
        pooled_prompt_embeds=r(batch, TINY_POOLED_DIM),
        time_ids=time_ids,
        negative_prompt_embeds=r(batch, seq_len, TINY_CROSS_DIM) if negative else None,
        negative_pooled_prompt_embeds=r(batch, TINY_POOLED_DIM) if negative else None,
    )
