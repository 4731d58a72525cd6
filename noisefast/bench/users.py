"""What a diffusers user writes to score seeds without noisefast: the baselines of ``noisefast bench scoring``.

Through the stock pipeline (SDXL-architecture models) or around the UNet alone (any model noisefast loads):

  pipeline, per seed    ``StableDiffusionXLPipeline(prompt, generator=Generator("cpu").manual_seed(s),
                        output_type="latent")`` per seed (DDIMScheduler), then a ``DDIMInverseScheduler`` loop over the
                        UNet, then s = cos(vec ε, vec F) with ε the seed's draw
  pipeline, batched     one pipeline call per chunk with ``num_images_per_prompt=len(chunk)`` and a list of generators
                        (each row is that seed's own draw), one batched inversion loop — the strongest a careful user
                        writes
  UNet loop, per seed / batched
                        the loop inside ``StableDiffusionXLPipeline.__call__`` (UNet + DDIMScheduler, CFG as one
                        ``[uncond; cond]`` call per step), then UNet + DDIMInverseScheduler, the prompt encoded once
  + compile             the same with the UNet behind ``torch.compile`` (``compiled``: made once per UNet, as
                        noisefast's compile backend does it)

Guidance as noisefast defines it: the denoising scale mixes only above 1 (the pipeline's rule); the inversion scale
``w`` always means ``m_u + w·(m_c − m_u)`` — 1: the conditional half alone, 0: the unconditional half alone.
Every user runs under ``torch.inference_mode`` in the UNet's dtype and device.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # UNet → its torch.compile wrapper


class Embeds(NamedTuple):
    """Prompt embeddings of batch 1: prompt [1, L, D], pooled [1, P] or None (non-SDXL UNets), time_ids [1, 6] or
    None, and the negative prompt's (None: zeros, SDXL's ``force_zeros_for_empty_prompt``)."""

    prompt: torch.Tensor
    pooled: torch.Tensor | None
    time_ids: torch.Tensor | None
    neg_prompt: torch.Tensor | None = None
    neg_pooled: torch.Tensor | None = None

    @classmethod
    def from_condition(cls, cond) -> "Embeds":
        """From a noisefast `Condition` of batch 1 (what the Engine encodes: the same text, encoded once)."""
        return cls(cond.prompt_embeds, cond.pooled_prompt_embeds, cond.time_ids, cond.negative_prompt_embeds,
                   cond.negative_pooled_prompt_embeds)  # fmt: skip


def compiled(unet, enabled: bool = True):
    """``torch.compile(unet)`` as noisefast's compile backend does it (``dynamic=False``; on CUDA
    ``mode="reduce-overhead"``, CUDA graphs), made once per UNet; ``unet`` itself when not ``enabled``."""
    if not enabled:
        return unet
    if unet not in _COMPILED:
        mode = "reduce-overhead" if unet.device.type == "cuda" else None
        _COMPILED[unet] = torch.compile(unet, mode=mode, dynamic=False)
    return _COMPILED[unet]


def halves(w: float, inversion: bool) -> str:
    """Which UNet halves a move runs: ``"cond"``, ``"uncond"`` or ``"both"`` (see the module's guidance rule)."""
    if not inversion:
        return "both" if w > 1 else "cond"
    return "cond" if w == 1 else "uncond" if w == 0 else "both"


def unet_kwargs(e: Embeds, rows: int, which: str, device, dtype) -> dict:
    """UNet keyword arguments for ``rows`` latents: ``[neg; pos]`` halves of 2·rows for ``"both"`` (diffusers' order)."""
    def rep(t, like=None):
        t = torch.zeros_like(like) if t is None else t
        return t.to(device, dtype).expand(rows, *t.shape[1:])

    pos = (rep(e.prompt), None if e.pooled is None else rep(e.pooled))
    neg = (rep(e.neg_prompt, e.prompt), None if e.pooled is None else rep(e.neg_pooled, e.pooled))
    if which == "cond":
        pe, pooled = pos
    elif which == "uncond":
        pe, pooled = neg
    else:
        pe, pooled = torch.cat([neg[0], pos[0]]), None if pos[1] is None else torch.cat([neg[1], pos[1]])
    kw = {"encoder_hidden_states": pe}
    if pooled is not None:  # SDXL's added conditioning
        tids = rep(e.time_ids)
        kw["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": torch.cat([tids, tids]) if which == "both" else tids}
    return kw


def ddim_loop(unet, scheduler, x: torch.Tensor, e: Embeds, w: float, *, inversion: bool) -> torch.Tensor:
    """The loop inside ``StableDiffusionXLPipeline.__call__``, for either DDIM scheduler; x [b, C, h, w] → [b, C, h, w]."""
    which = halves(w, inversion)
    kw = unet_kwargs(e, x.shape[0], which, x.device, x.dtype)
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([x, x]) if which == "both" else x, t)
        out = unet(inp, t, return_dict=False, **kw)[0]
        if which == "both":
            out_u, out_c = out.chunk(2)
            out = out_u + w * (out_c - out_u)
        x = scheduler.step(out, t, x, return_dict=False)[0]
    return x


def schedulers(scheduler_config: dict, steps: int, inversion_steps: int, device):
    """(DDIMScheduler, DDIMInverseScheduler) from one config, timesteps set."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps, device=device)
    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    inverse.set_timesteps(inversion_steps, device=device)
    return sched, inverse


def seed_noise(seeds, shape, device, dtype) -> torch.Tensor:  # [len(seeds), *shape]
    """The pipeline's draw: ``randn_tensor`` with one CPU generator per seed (rows = per-seed draws)."""
    from diffusers.utils.torch_utils import randn_tensor

    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return randn_tensor((len(seeds), *shape), generator=gens if len(gens) > 1 else gens[0], device=device, dtype=dtype)


def row_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # a, b [b, ...] → [b] float32 on CPU
    return torch.nn.functional.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1).cpu()


def chunks(seeds, batch: int) -> list[list[int]]:
    seeds = list(seeds)
    return [seeds[i : i + batch] for i in range(0, len(seeds), batch)]


def unet_loop_scores(unet, scheduler_config: dict, seeds, e: Embeds, *, shape, steps: int, inversion_steps: int,
                     guidance: float, inversion_guidance: float, batch: int = 1,
                     compile_unet: bool = False) -> torch.Tensor:  # [K] float32 on CPU
    """UNet + scheduler loops, ``batch`` seeds at a time (1: the per-seed user); ``shape`` = (C, h, w) per latent."""
    device, dtype = unet.device, unet.dtype
    call = compiled(unet, compile_unet)
    sched, inverse = schedulers(scheduler_config, steps, inversion_steps, device)
    scores = []
    with torch.inference_mode():
        for chunk in chunks(seeds, batch):
            eps = seed_noise(chunk, shape, device, dtype)
            x0 = ddim_loop(call, sched, eps * sched.init_noise_sigma, e, guidance, inversion=False)
            scores.append(row_cosine(eps, ddim_loop(call, inverse, x0, e, inversion_guidance, inversion=True)))
    return torch.cat(scores)


def pipeline_scores(pipe, prompt: str, seeds, *, steps: int, inversion_steps: int, guidance: float,
                    inversion_guidance: float, height: int, width: int, batch: int = 1,
                    compile_unet: bool = False) -> torch.Tensor:  # [K] float32 on CPU
    """Stock pipeline (``output_type="latent"``) + DDIMInverseScheduler loop, ``batch`` seeds per pipeline call.

    ``pipe.scheduler`` must be a DDIM-compatible config (``DDIMScheduler.from_config(pipe.scheduler.config)``).
    """
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    device = pipe._execution_device
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(inversion_steps, device=device)
    pe, npe, pooled, npooled = pipe.encode_prompt(prompt, device=device,
                                                  do_classifier_free_guidance=halves(inversion_guidance, True) != "cond")
    time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), pe.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    e = Embeds(pe, pooled, time_ids, npe, npooled)
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    unet, scheduler = pipe.unet, pipe.scheduler
    pipe.unet = compiled(unet, compile_unet)  # the documented way to compile a pipeline's UNet
    if not isinstance(scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(scheduler.config)
    scores = []
    try:
        with torch.inference_mode():
            for chunk in chunks(seeds, batch):
                gens = [torch.Generator("cpu").manual_seed(s) for s in chunk]
                x = pipe(prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                         num_images_per_prompt=len(chunk), generator=gens if len(gens) > 1 else gens[0],
                         output_type="latent").images  # fmt: skip
                back = ddim_loop(pipe.unet, inverse, x, e, inversion_guidance, inversion=True)
                scores.append(row_cosine(seed_noise(chunk, shape, device, pe.dtype), back))
    finally:
        pipe.unet, pipe.scheduler = unet, scheduler
    return torch.cat(scores)
