"""What ``noisefast bench`` measures: the user's model (``--model``: hub id, folder, ``builtin:NAME``), or a built-in
random-weight SDXL architecture when none is given, always through an `EngineConfig`.

    arch:tiny         the tiny SDXL pipeline of `noisefast.testing` (CPU-sized), saved to a folder and loaded back
                      through `Engine.from_config` like any model folder; settings 64², 4+4 steps, CFG 5
    arch:sdxl         the full-size SDXL UNet (``configs/sdxl_unet.json``, 2.6 B parameters) with random weights,
                      built on the device in the engine's dtype, SDXL's scheduler config; small random text encoders
                      of the right widths and a small VAE (scoring never decodes); settings 1024², 4+4, CFG 5.5
    arch:sdxl-turbo   the same UNet with SDXL-Turbo's trailing schedule; settings 512², 1+1, no CFG

(same FLOPs and bytes per UNet call as the real weights). Default: ``arch:tiny`` on a CPU, ``arch:sdxl-turbo`` on
CUDA. The Engine is `Engine.from_config(config)` for a user's model and ``Engine(model, config)`` over the built
architecture — the same construction. The diffusers users need the model *unmodified*: where the engine's fast path
rewrites its UNet in place (channels_last, fused QKV, dtype), `plain_model` loads a second copy for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from noisefast.config import EngineConfig

ARCH_PREFIX = "arch:"
ARCHS = ("tiny", "sdxl", "sdxl-turbo")
ARCH_SETTINGS = {  # the settings a built-in architecture is measured at unless flags say otherwise
    "tiny": dict(height=64, width=64, steps=4, inversion_steps=4, guidance_scale=5.0, inversion_guidance_scale=1.0),
    "sdxl": dict(height=1024, width=1024, steps=4, inversion_steps=4, guidance_scale=5.5, inversion_guidance_scale=1.0),
    "sdxl-turbo": dict(height=512, width=512, steps=1, inversion_steps=1, guidance_scale=0.0,
                       inversion_guidance_scale=1.0),
}
SDXL_UNET_CONFIG = Path(__file__).parent / "configs" / "sdxl_unet.json"
SDXL_TEXT_ENCODER_2_WIDTH = 1280  # OpenCLIP bigG; text encoder 1 (CLIP-L) is cross_attention_dim − this wide
PROMPT_TOKENS = 77


def arch_of(config: EngineConfig) -> str | None:
    """``"tiny"`` etc. for ``model="arch:tiny"``, None for a real model."""
    if not config.model.startswith(ARCH_PREFIX):
        return None
    arch = config.model[len(ARCH_PREFIX) :]
    if arch not in ARCHS:
        from noisefast.errors import InputError

        raise InputError(f"--model {config.model}: the built-in architectures are "
                         f"{', '.join(ARCH_PREFIX + a for a in ARCHS)}")  # fmt: skip
    return arch


def default_model(device: str | None) -> str:
    from noisefast.loading import resolve_device

    return ARCH_PREFIX + ("sdxl-turbo" if resolve_device(device).type == "cuda" else "tiny")


def sdxl_unet_config() -> dict:
    return json.loads(SDXL_UNET_CONFIG.read_text())


def build_unet(config: dict, device, dtype: torch.dtype, seed: int = 0):
    """A random-weight ``UNet2DConditionModel`` from ``config``, built on ``device`` (no host copy), eval, frozen."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    unet = unet.to(dtype).eval()
    unet.requires_grad_(False)
    return unet


def random_condition(config, batch: int, pixels: int, device, dtype: torch.dtype, *, negative: bool = False,
                     seed: int = 0):
    """A random SDXL-shaped `Condition` for a UNet ``config`` (what two text encoders would hand over).

    prompt_embeds [batch, 77, cross_attention_dim], pooled [batch, P] with P = projection input − 6·time
    embed dim (SDXL: 2816 − 6·256 = 1280), time_ids [batch, 6] = (H, W, 0, 0, H, W).
    """
    from noisefast.denoisers.base import Condition

    cfg = dict(config)
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    time_ids = torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]], dtype=torch.float32)
    return Condition(
        prompt_embeds=r(batch, PROMPT_TOKENS, cfg["cross_attention_dim"]),
        pooled_prompt_embeds=r(batch, pooled),
        time_ids=time_ids.expand(batch, 6).to(device=device, dtype=dtype),
        negative_prompt_embeds=r(batch, PROMPT_TOKENS, cfg["cross_attention_dim"]) if negative else None,
        negative_pooled_prompt_embeds=r(batch, pooled) if negative else None,
    )


def _text_encoders(cross_dim: int, pooled_dim: int, seed: int):
    """Two 2-layer random CLIP text encoders whose widths add up to ``cross_dim``, the second projecting to
    ``pooled_dim`` (SDXL: 768 + 1280 = 2048, pooled 1280), over the tiny byte-level vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from noisefast.testing import TINY_MAX_TOKENS

    def cfg(width):
        return CLIPTextConfig(vocab_size=2 + 2 * 256, hidden_size=width, intermediate_size=2 * width,
                              projection_dim=pooled_dim, num_hidden_layers=2, num_attention_heads=width // 64,
                              max_position_embeddings=TINY_MAX_TOKENS, hidden_act="gelu", bos_token_id=0,
                              eos_token_id=1, pad_token_id=1)  # fmt: skip

    torch.manual_seed(seed)
    second = SDXL_TEXT_ENCODER_2_WIDTH
    return CLIPTextModel(cfg(cross_dim - second)).eval(), CLIPTextModelWithProjection(cfg(second)).eval()


def full_size_pipeline(device, dtype: torch.dtype, *, turbo: bool, workdir, seed: int = 0):
    """A `StableDiffusionXLPipeline` around the full-size random-weight SDXL UNet (see the module docstring)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline

    from noisefast.testing import SDXL_EULER_SCHEDULER_CONFIG, TINY_VAE_CONFIG, tiny_clip_tokenizer

    config = sdxl_unet_config()
    unet = build_unet(config, device, dtype, seed)
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    te1, te2 = _text_encoders(config["cross_attention_dim"], pooled, seed)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**{**TINY_VAE_CONFIG, "sample_size": 8 * config["sample_size"]}).eval()
    tok = tiny_clip_tokenizer(Path(workdir) / "vocab")
    sched = {**SDXL_EULER_SCHEDULER_CONFIG, "timestep_spacing": "trailing" if turbo else "leading"}
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=EulerDiscreteScheduler.from_config(sched),
                                     add_watermarker=False)  # fmt: skip
    pipe.to(device=device, dtype=dtype)
    for m in (te1, te2, vae):
        m.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_model(config: EngineConfig, workdir):
    """The `noisefast.loading.LoadedModel` of ``config`` (a user's model, or a built-in architecture)."""
    from noisefast.loading import load_model as load, model_from_pipe, resolve_device, resolve_dtype

    arch = arch_of(config)
    if arch is None:
        return require_unet(load(config.model, device=config.device, dtype=config.dtype, variant=config.variant,
                                 family=config.family), config.model)  # fmt: skip
    if arch == "tiny":
        from noisefast.testing import tiny_sdxl_pipeline

        folder = Path(workdir) / "arch-tiny"
        if not folder.is_dir():
            tiny_sdxl_pipeline(folder)
        return load(folder, device=config.device, dtype=config.dtype, family=config.family)
    device = resolve_device(config.device)
    pipe = full_size_pipeline(device, resolve_dtype(config.dtype, device), turbo=arch == "sdxl-turbo", workdir=workdir)
    return model_from_pipe(pipe, family=config.family)


def open_engine(config: EngineConfig, workdir):
    """The Engine of ``config``: `Engine.from_config` for a user's model, ``Engine(model, config)`` for an architecture."""
    from noisefast.pipeline import Engine

    if arch_of(config) is None:
        engine = Engine.from_config(config)
        require_unet(engine.model, config.model)
        return engine
    return Engine(load_model(config, workdir), config)


def require_unet(model, name: str):
    """The bench's users and UNet measurements are UNet pipelines: refuse an SD3/FLUX model in one line."""
    if model.unet is None:
        from noisefast.errors import InputError

        raise InputError(f"noisefast bench measures UNet pipelines (SDXL, builtin:NAME, arch:...); {name} is a "
                         f"{model.kind.upper()} transformer — measure it with python bench/bench_flow.py")  # fmt: skip
    return model


def engine_record(engine, config: EngineConfig) -> dict:
    """`Engine.describe` with the model named as the user named it (``arch:tiny`` rather than a temporary folder)."""
    d = engine.describe()
    if arch_of(config) is not None:
        d |= {"model": config.model, "folder": None, "random_weights": True}
    return d


def unet_dtype(engine) -> torch.dtype:
    """The dtype an Engine's UNet computes in (the fast path's, when it sets one)."""
    fp = engine.fast_path
    return fp.torch_dtype if fp is not None and fp.dtype is not None else engine.dtype


def rewrites_unet(config: EngineConfig) -> bool:
    """Whether an Engine of ``config`` changes its UNet in place (the fast path's dtype/layout/attention)."""
    fp = config.fast_path
    return fp is not None and (fp.dtype is not None or fp.channels_last or fp.fuse_qkv or fp.attention != "default")


def plain_model(engine, config: EngineConfig, workdir):
    """The model as loaded, for the diffusers users: the engine's own, or a second copy where the engine rewrote it."""
    return load_model(config, workdir) if rewrites_unet(config) else engine.model


def variant_engine(engine, base: EngineConfig, variant: EngineConfig, workdir):
    """An Engine of ``variant`` over the same weights (its own copy where the variant rewrites the UNet)."""
    from noisefast.pipeline import Engine

    shared = not rewrites_unet(variant) and not rewrites_unet(base)
    return Engine(engine.model if shared else load_model(variant, workdir), variant)
