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


# --- A whole tiny SDXL pipeline -----------------------------------------------------------------------
# Two CLIP text encoders whose penultimate hidden states concatenate to TINY_CROSS_DIM, the second with a
# TINY_POOLED_DIM projection (SDXL's pooled embedding); CLIP tokenizers over a byte-level vocabulary
# written locally (every byte is a token, so any text encodes, no merges); a 4-level AutoencoderKL so the
# VAE scale factor is 8 like SDXL's; the tiny UNet; a DDIMScheduler from SDXL's scheduler settings.
TINY_TEXT_HIDDEN = TINY_CROSS_DIM // 2
TINY_MAX_TOKENS = 77
TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=TINY_UNET_CONFIG["sample_size"] * 8,
    scaling_factor=0.13025,  # SDXL's
)
# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json, verbatim. SDXL-Turbo's is the
# same with "timestep_spacing": "trailing". Read by a DDIMScheduler it means clip_sample=True (the key
# is missing and DDIM's default is True).
SDXL_EULER_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
# The DDIMScheduler settings of the tiny pipeline: SDXL's, without x̂₀ clipping.
SDXL_SCHEDULER_CONFIG = {
    k: v for k, v in SDXL_EULER_SCHEDULER_CONFIG.items()
    if k in ("beta_end", "beta_schedule", "beta_start", "num_train_timesteps", "prediction_type",
             "set_alpha_to_one", "steps_offset", "timestep_spacing")
} | {"clip_sample": False}


def write_tiny_clip_vocab(folder) -> str:
    """Write ``vocab.json`` + ``merges.txt`` of a byte-level CLIP vocabulary into ``folder``; returns it.

    Token ids: 0 ``<|startoftext|>``, 1 ``<|endoftext|>`` (also pad), then each byte character and the
    same with CLIP's end-of-word ``</w>`` (514 tokens). No merges: every word is spelled byte by byte.
    """
    import json
    import os

    from noisefast.builtin.vocab import bytes_to_unicode

    os.makedirs(folder, exist_ok=True)
    chars = list(bytes_to_unicode().values())  # GPT-2/CLIP's printable character for each byte
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: 2 + i for i, c in enumerate(chars)})
    vocab.update({c + "</w>": 2 + len(chars) + i for i, c in enumerate(chars)})
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return os.fspath(folder)


def tiny_clip_tokenizer(folder):
    """A `CLIPTokenizer` loaded from a vocabulary written into ``folder`` (see `write_tiny_clip_vocab`)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(write_tiny_clip_vocab(folder), model_max_length=TINY_MAX_TOKENS)


def tiny_text_encoders(seed: int = 0):
    """(CLIPTextModel, CLIPTextModelWithProjection): hidden TINY_TEXT_HIDDEN each, projection TINY_POOLED_DIM."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=2 + 2 * 256,
        hidden_size=TINY_TEXT_HIDDEN,
        intermediate_size=2 * TINY_TEXT_HIDDEN,
        projection_dim=TINY_POOLED_DIM,
        num_hidden_layers=2,  # SDXL reads the penultimate hidden state
        num_attention_heads=4,
        max_position_embeddings=TINY_MAX_TOKENS,
        hidden_act="gelu",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    te1 = CLIPTextModel(config).eval()
    te2 = CLIPTextModelWithProjection(config).eval()
    return te1, te2


def tiny_vae(seed: int = 0):
    """A random-weight `AutoencoderKL` with SDXL's scale factor 8 (four levels)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE_CONFIG).eval()


def tiny_sdxl_pipeline(folder, *, seed: int = 0, scheduler_overrides: dict | None = None):
    """A complete tiny `StableDiffusionXLPipeline`, saved to ``folder`` and loaded back from it.

    The returned pipeline went through ``save_pretrained``/``from_pretrained`` (the real loading code);
    ``folder`` is a normal diffusers pipeline folder any loader can use afterwards. Its scheduler is a
    ``DDIMScheduler`` with SDXL's settings (``clip_sample=False``; ``scheduler_overrides`` to change them,
    e.g. ``{"timestep_spacing": "trailing"}`` for SDXL-Turbo style). Default image size: 128×128
    (latents 4×16×16); every size that is a multiple of 16 works.
    """
    import os
    import tempfile

    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    te1, te2 = tiny_text_encoders(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = tiny_clip_tokenizer(os.path.join(tmp, "vocab"))
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(seed),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok,
        tokenizer_2=tok,
        unet=tiny_unet(seed),
        scheduler=DDIMScheduler(**{**SDXL_SCHEDULER_CONFIG, **(scheduler_overrides or {})}),
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    loaded = StableDiffusionXLPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    return loaded
