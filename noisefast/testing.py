"""Tiny SDXL-, SD3- and FLUX-architecture pipelines with random weights, for tests and CPU benchmarks.

Same code paths as the real models (UNet2DConditionModel with SDXL's ``text_time`` added conditioning;
SD3Transformer2DModel; FluxTransformer2DModel), a few hundred kilobytes of weights. Nothing here touches the hub.
"""

from __future__ import annotations

import string

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



# --- Tiny flow-matching pipelines: SD3 and FLUX.1 ----------------------------------------------------------
# The real architectures shrunk — SD3Transformer2DModel (joint attention, patch 2, pooled projections) and
# FluxTransformer2DModel (double + single stream blocks, RoPE over 3 axes, optionally FLUX.1-dev's guidance
# embedding) — with the real text stacks (two CLIP + T5 for SD3, CLIP + T5 for FLUX), a 4-level VAE with 16 latent
# channels (scale factor 8, SD3's/FLUX's scaling_factor and shift_factor) and the real checkpoints' scheduler
# configs. T5's tokenizer is a Unigram over single characters built in memory (any text encodes, nothing touches
# the hub). Each builder saves the pipeline and returns it loaded back: the folder is an ordinary diffusers
# pipeline folder that Engine.from_pretrained(folder) loads through the real code.
TINY_CLIP_HIDDEN = 32  # each CLIP's width (pooled: TINY_CLIP_HIDDEN for FLUX, 2·projection for SD3)
TINY_T5_DIM = 64  # T5 width = the transformers' joint_attention_dim
TINY_LATENT_CHANNELS = 16  # as SD3's and FLUX's VAEs

# The checkpoints' scheduler_config.json (FlowMatchEulerDiscreteScheduler), the keys that differ from defaults.
SD3_SCHEDULER_CONFIG = {"shift": 3.0}  # stable-diffusion-3-medium, 3.5-large, 3.5-large-turbo
FLUX_DEV_SCHEDULER_CONFIG = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                             "base_image_seq_len": 256, "max_image_seq_len": 4096}  # fmt: skip
FLUX_SCHNELL_SCHEDULER_CONFIG = {"shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15,
                                 "base_image_seq_len": 256, "max_image_seq_len": 4096}  # fmt: skip

TINY_SD3_TRANSFORMER_CONFIG = dict(
    sample_size=16, patch_size=2, in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS, num_layers=2,
    attention_head_dim=8, num_attention_heads=4, joint_attention_dim=TINY_T5_DIM, caption_projection_dim=32,
    pooled_projection_dim=2 * TINY_CLIP_HIDDEN, pos_embed_max_size=96,
)  # fmt: skip
TINY_FLUX_TRANSFORMER_CONFIG = dict(
    patch_size=1, in_channels=4 * TINY_LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=TINY_T5_DIM, pooled_projection_dim=TINY_CLIP_HIDDEN,
    axes_dims_rope=(4, 6, 6),
)  # fmt: skip


def tiny_t5_tokenizer():
    """A `T5Tokenizer` (Unigram) over single characters: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``▁``, each printable
    ASCII character alone and after ``▁`` (word start). Built in memory; ``save_pretrained`` writes tokenizer.json."""
    from transformers import T5Tokenizer

    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("▁" + c, -3.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_t5_encoder(vocab_size: int, seed: int = 0):
    """A random `T5EncoderModel`: width TINY_T5_DIM, 2 layers."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=TINY_T5_DIM, d_kv=16, d_ff=2 * TINY_T5_DIM, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                      eos_token_id=1)  # fmt: skip
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def _clip_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=2 + 2 * 256, hidden_size=TINY_CLIP_HIDDEN, intermediate_size=2 * TINY_CLIP_HIDDEN,
                          projection_dim=TINY_CLIP_HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=TINY_MAX_TOKENS, hidden_act="gelu", bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)  # fmt: skip


def tiny_flow_vae(seed: int = 0, *, scaling_factor: float, shift_factor: float):
    """A random 4-level `AutoencoderKL` with 16 latent channels (scale factor 8) and the model's latent scaling."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                         latent_channels=TINY_LATENT_CHANNELS, norm_num_groups=8, sample_size=128,
                         scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=False,
                         use_post_quant_conv=False).eval()  # fmt: skip


def _save_and_reload(pipe, folder):
    pipe.save_pretrained(folder)
    loaded = type(pipe).from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    return loaded


def tiny_sd3_pipeline(folder, *, seed: int = 0, scheduler_overrides: dict | None = None):
    """A complete tiny `StableDiffusion3Pipeline` (SD3's scheduler: shift 3), saved to ``folder`` and loaded back.

    Image sizes: multiples of 16 (VAE factor 8 × patch 2) up to 1536 (``pos_embed_max_size`` 96 patches).
    """
    import os
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    t5_tok = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    te1, te2 = CLIPTextModelWithProjection(_clip_config()).eval(), CLIPTextModelWithProjection(_clip_config()).eval()
    te3 = tiny_t5_encoder(len(t5_tok), seed)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**TINY_SD3_TRANSFORMER_CONFIG).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tok = tiny_clip_tokenizer(os.path.join(tmp, "vocab"))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=tiny_flow_vae(seed, scaling_factor=1.5305, shift_factor=0.0609),
        scheduler=FlowMatchEulerDiscreteScheduler(**{**SD3_SCHEDULER_CONFIG, **(scheduler_overrides or {})}),
        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok, text_encoder_3=te3, tokenizer_3=t5_tok,
    )  # fmt: skip
    return _save_and_reload(pipe, folder)


def tiny_flux_pipeline(folder, *, seed: int = 0, guidance_embeds: bool = True, scheduler_overrides: dict | None = None):
    """A complete tiny `FluxPipeline`, saved to ``folder`` and loaded back.

    ``guidance_embeds=True``: FLUX.1-dev style (guidance embedding, dynamic shifting); False: FLUX.1-schnell style
    (no guidance input, shift 1). Image sizes: multiples of 16 (VAE factor 8 × the 2×2 packing).
    """
    import os
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    t5_tok = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    clip = CLIPTextModel(_clip_config()).eval()
    t5 = tiny_t5_encoder(len(t5_tok), seed)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**TINY_FLUX_TRANSFORMER_CONFIG, guidance_embeds=guidance_embeds).eval()
    sched_cfg = FLUX_DEV_SCHEDULER_CONFIG if guidance_embeds else FLUX_SCHNELL_SCHEDULER_CONFIG
    with tempfile.TemporaryDirectory() as tmp:
        tok = tiny_clip_tokenizer(os.path.join(tmp, "vocab"))
    pipe = FluxPipeline(
        transformer=transformer, vae=tiny_flow_vae(seed, scaling_factor=0.3611, shift_factor=0.1159),
        scheduler=FlowMatchEulerDiscreteScheduler(**{**sched_cfg, **(scheduler_overrides or {})}),
        text_encoder=clip, tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5_tok,
    )  # fmt: skip
    return _save_and_reload(pipe, folder)
