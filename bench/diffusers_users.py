"""What a diffusers user writes to score seeds without noisefast: the baselines of the scoring benchmarks.

Four users, from the most naive to the strongest a careful user would write, all with stock diffusers:

  per seed, UNet loop      for each seed: ε = randn_tensor((1, C, h, w), Generator("cpu").manual_seed(s));
                           x₀ = UNet + DDIMScheduler loop (CFG: one [uncond; cond] call per step);
                           F = UNet + DDIMInverseScheduler loop; s = cos(vec ε, vec F)
  batched, UNet loop       the same over a whole chunk of seeds at once (one generator per seed, so each row
                           is the per-seed draw), the cosine per row
  per seed, pipeline       ``StableDiffusionXLPipeline(prompt, generator=..., output_type="latent")`` per seed,
                           then the inversion loop
  batched, pipeline        one pipeline call per chunk with ``num_images_per_prompt=len(chunk)`` and a list of
                           generators (the pipeline draws each row from its own generator), then one batched
                           inversion loop over the chunk

Every user runs under ``torch.inference_mode`` in the UNet's dtype and device. ``compile_unet=True`` puts the
UNet behind ``torch.compile`` (what a user does when noisefast's row compiles too); the compiled module is made
once per UNet and reused (`compiled`). The prompt embeddings are made (or encoded) once, outside the loop —
generous to the baselines.
"""

from __future__ import annotations

import weakref

import torch

_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # UNet → its torch.compile wrapper


def compiled(unet, enabled: bool = True):
    """``torch.compile(unet)`` as noisefast's compile backend does it (``dynamic=False``; on CUDA
    ``mode="reduce-overhead"``, CUDA graphs), made once per UNet; ``unet`` itself when not ``enabled``."""
    if not enabled:
        return unet
    if unet not in _COMPILED:
        mode = "reduce-overhead" if unet.device.type == "cuda" else None
        _COMPILED[unet] = torch.compile(unet, mode=mode, dynamic=False)
    return _COMPILED[unet]


def schedulers(scheduler_config: dict, steps: int, inversion_steps: int, device):
    """(DDIMScheduler, DDIMInverseScheduler) from one config, timesteps set."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps, device=device)
    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    inverse.set_timesteps(inversion_steps, device=device)
    return sched, inverse


def unet_kwargs(pe, pooled, time_ids, neg_pe, neg_pooled, rows: int, cfg: bool, device, dtype) -> dict:
    """UNet keyword arguments for ``rows`` latents: [neg; pos] halves of 2·rows when ``cfg`` (diffusers' order).

    pe [1, L, D], pooled [1, P], time_ids [1, 6] (neg_* alike, used only with cfg).
    """
    def rep(t):
        return t.to(device, dtype).expand(rows, *t.shape[1:])

    pe, pooled, tids = rep(pe), rep(pooled), rep(time_ids)
    if cfg:
        pe, pooled, tids = torch.cat([rep(neg_pe), pe]), torch.cat([rep(neg_pooled), pooled]), torch.cat([tids, tids])
    return dict(encoder_hidden_states=pe, added_cond_kwargs={"text_embeds": pooled, "time_ids": tids})


def cond_kwargs(cond, rows: int, cfg: bool, device, dtype) -> dict:
    """`unet_kwargs` from a noisefast `Condition` of batch 1 (zeros for a missing negative, like SDXL)."""
    neg = cond.negative()
    return unet_kwargs(cond.prompt_embeds, cond.pooled_prompt_embeds, cond.time_ids, neg.prompt_embeds,
                       neg.pooled_prompt_embeds, rows, cfg, device, dtype)


def ddim_loop(unet, scheduler, x: torch.Tensor, kwargs: dict, w: float) -> torch.Tensor:  # x [b, C, h, w] → [b, C, h, w]
    """The loop inside ``StableDiffusionXLPipeline.__call__`` (CFG when ``w > 1``), for either DDIM scheduler."""
    cfg = w > 1  # the pipeline's do_classifier_free_guidance
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([x, x]) if cfg else x, t)
        out = unet(inp, t, return_dict=False, **kwargs)[0]
        if cfg:
            out_u, out_c = out.chunk(2)
            out = out_u + w * (out_c - out_u)
        x = scheduler.step(out, t, x, return_dict=False)[0]
    return x


def seed_noise(seeds, shape, device, dtype) -> torch.Tensor:  # [len(seeds), *shape]
    """The pipeline's draw: ``randn_tensor`` with one CPU generator per seed (rows = per-seed draws)."""
    from diffusers.utils.torch_utils import randn_tensor

    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return randn_tensor((len(seeds), *shape), generator=gens if len(gens) > 1 else gens[0], device=device, dtype=dtype)


def row_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # a, b [b, ...] → [b] float32 on CPU
    return torch.nn.functional.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1).cpu()


def chunks(seeds, batch: int):
    seeds = list(seeds)
    return [seeds[i : i + batch] for i in range(0, len(seeds), batch)]


def unet_loop_scores(unet, scheduler_config: dict, seeds, cond, *, pixels: int, steps: int, inversion_steps: int,
                     guidance: float, inversion_guidance: float, batch: int = 1,
                     compile_unet: bool = False) -> torch.Tensor:  # [K] float32 on CPU
    """UNet + scheduler loops, ``batch`` seeds at a time (1: the per-seed user; K: the batched user)."""
    device, dtype = unet.device, unet.dtype
    call = compiled(unet, compile_unet)
    sched, inverse = schedulers(scheduler_config, steps, inversion_steps, device)
    shape = (unet.config.in_channels, pixels // 8, pixels // 8)
    scores = []
    with torch.inference_mode():
        for chunk in chunks(seeds, batch):
            kw_d = cond_kwargs(cond, len(chunk), guidance > 1, device, dtype)
            kw_i = cond_kwargs(cond, len(chunk), inversion_guidance > 1, device, dtype)
            eps = seed_noise(chunk, shape, device, dtype)
            x0 = ddim_loop(call, sched, eps * sched.init_noise_sigma, kw_d, guidance)
            scores.append(row_cosine(eps, ddim_loop(call, inverse, x0, kw_i, inversion_guidance)))
    return torch.cat(scores)


def pipeline_scores(pipe, prompt: str, seeds, *, steps: int, inversion_steps: int, guidance: float,
                    inversion_guidance: float, height: int, width: int, batch: int = 1,
                    compile_unet: bool = False) -> torch.Tensor:  # [K] float32 on CPU
    """Stock pipeline (``output_type="latent"``) + DDIMInverseScheduler loop, ``batch`` seeds per pipeline call.

    ``pipe.scheduler`` must be a DDIMScheduler (``DDIMScheduler.from_config(pipe.scheduler.config)``).
    """
    from diffusers import DDIMInverseScheduler

    device = pipe.unet.device
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(inversion_steps, device=device)
    cfg_i = inversion_guidance > 1
    pe, npe, pooled, npooled = pipe.encode_prompt(prompt, device=device, do_classifier_free_guidance=cfg_i)
    time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), pe.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    unet = pipe.unet
    pipe.unet = compiled(unet, compile_unet)  # the documented way to compile a pipeline's UNet
    scores = []
    try:
        with torch.inference_mode():
            for chunk in chunks(seeds, batch):
                gens = [torch.Generator("cpu").manual_seed(s) for s in chunk]
                x = pipe(prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                         num_images_per_prompt=len(chunk), generator=gens if len(gens) > 1 else gens[0],
                         output_type="latent").images
                kw = unet_kwargs(pe, pooled, time_ids, npe, npooled, len(chunk), cfg_i, device, pe.dtype)
                back = ddim_loop(pipe.unet, inverse, x, kw, inversion_guidance)
                scores.append(row_cosine(seed_noise(chunk, shape, device, pe.dtype), back))
    finally:
        pipe.unet = unet
    return torch.cat(scores)
