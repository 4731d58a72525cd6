"""Part 2 of `bench.compare` where no text encoders or VAE are at hand (the full-size SDXL UNet on a GPU).

The diffusers-user baseline is what one writes around the UNet alone, per seed (the loop inside
``StableDiffusionXLPipeline.__call__`` with ``output_type="latent"``, then an inversion loop):

  1. ε = randn_tensor((1, C, h, w), generator=torch.Generator("cpu").manual_seed(seed))  (the pipeline's draw)
  2. x = ε · init_noise_sigma; for t in DDIMScheduler.timesteps: m = UNet(x, t) (CFG: [uncond; cond] batch),
     x = DDIMScheduler.step(m, t, x)
  3. for t in DDIMInverseScheduler.timesteps: m = UNet(x, t), x = DDIMInverseScheduler.step(m, t, x)
  4. s = cos(vec(ε), vec(x))

The prompt embeddings are random tensors of the right shapes, made once (as if encoded once, outside the
loop — generous to the baseline). noisefast runs `stability_score` on all seeds' noise, ``batch`` at a time,
with the same UNet, condition, scheduler settings and dtype. Both are timed alternately, whole runs,
synchronised; the scores of both are compared.
"""

from __future__ import annotations

import torch

from bench.common import summarize, time_wall_s


def diffusers_loop_scores(unet, scheduler_config: dict, seeds, cond, *, pixels: int, steps: int, inversion_steps: int,
                          guidance: float, inversion_guidance: float) -> torch.Tensor:  # [K] float32 on CPU
    """Steps 1–4 above for each seed, one seed at a time."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype = unet.device, unet.dtype
    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps, device=device)
    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    inverse.set_timesteps(inversion_steps, device=device)

    def unet_kwargs(cfg: bool) -> dict:
        pe, pooled, tids = cond.prompt_embeds, cond.pooled_prompt_embeds, cond.time_ids
        if cfg:
            neg = cond.negative()
            pe, pooled, tids = torch.cat([neg.prompt_embeds, pe]), torch.cat([neg.pooled_prompt_embeds, pooled]), torch.cat([tids, tids])
        return dict(encoder_hidden_states=pe.to(device, dtype),
                    added_cond_kwargs={"text_embeds": pooled.to(device, dtype), "time_ids": tids.to(device, dtype)})

    def loop(scheduler, x, w):
        cfg = w > 1  # the pipeline's do_classifier_free_guidance
        kwargs = unet_kwargs(cfg)
        for t in scheduler.timesteps:
            inp = torch.cat([x, x]) if cfg else x
            inp = scheduler.scale_model_input(inp, t)
            out = unet(inp, t, return_dict=False, **kwargs)[0]
            if cfg:
                out_u, out_c = out.chunk(2)
                out = out_u + w * (out_c - out_u)
            x = scheduler.step(out, t, x, return_dict=False)[0]
        return x

    shape = (1, unet.config.in_channels, pixels // 8, pixels // 8)
    scores = []
    with torch.inference_mode():
        for s in seeds:
            eps = randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(s), device=device, dtype=dtype)
            x0 = loop(sched, eps * sched.init_noise_sigma, guidance)
            back = loop(inverse, x0, inversion_guidance)
            scores.append(torch.nn.functional.cosine_similarity(eps.flatten().float(), back.flatten().float(), dim=0).item())
    return torch.tensor(scores)


def noisefast_scores(unet, scheduler_config: dict, seeds, cond, *, pixels: int, steps: int, inversion_steps: int,
                     guidance: float, inversion_guidance: float, batch: int) -> torch.Tensor:  # [K] float32 on CPU
    """The same scores with noisefast: the seeds' noise drawn at once, `stability_score` ``batch`` at a time."""
    from noisefast.denoisers.unet import UNetDenoiser
    from noisefast.schedule import DDIMSchedule
    from noisefast.seeds import noise_from_seeds
    from noisefast.stability import stability_score

    sched = DDIMSchedule.from_config(scheduler_config, steps, inversion_steps)
    noise = noise_from_seeds(seeds, (unet.config.in_channels, pixels // 8, pixels // 8), dtype=unet.dtype,
                             device=unet.device)
    with torch.inference_mode():
        s = stability_score(UNetDenoiser(unet), sched, noise, cond, guidance, inversion_guidance, max_batch=batch)
    return s.float().cpu()


def scoring_unet_loop(unet, scheduler_config: dict, *, seeds: int, pixels: int, steps: int, inversion_steps: int,
                      guidance: float, inversion_guidance: float, batch: int, repeats: int) -> dict:
    """noises/s of both ways (one untimed warm-up run each, then ``repeats`` alternating timed runs)."""
    from bench.compare_unet import random_condition

    device = unet.device
    cond = random_condition(unet.config, 1, pixels, device, unet.dtype, negative=max(guidance, inversion_guidance) > 1)
    kw = dict(pixels=pixels, steps=steps, inversion_steps=inversion_steps, guidance=guidance,
              inversion_guidance=inversion_guidance)
    seed_list = list(range(seeds))
    ways = {
        "diffusers_user": lambda: diffusers_loop_scores(unet, scheduler_config, seed_list, cond, **kw),
        "noisefast": lambda: noisefast_scores(unet, scheduler_config, seed_list, cond, batch=batch, **kw),
    }
    scores = {name: fn() for name, fn in ways.items()}  # warm-up, and the scores to compare
    seconds = {name: [] for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            seconds[name].append(time_wall_s(fn, device=device)[0])
    stats = {name: summarize(ts) for name, ts in seconds.items()}
    rate = {name: seeds / stats[name]["median"] for name in ways}
    return {
        "baseline": "per seed: UNet + DDIMScheduler loop, then UNet + DDIMInverseScheduler loop (random prompt embeddings)",
        "model": f"UNet2DConditionModel ({sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters, random "
                 f"weights), {str(unet.dtype).replace('torch.', '')}, {device}",
        "settings": dict(seeds=seeds, height=pixels, width=pixels, steps=steps, inversion_steps=inversion_steps,
                         guidance=guidance, inversion_guidance=inversion_guidance, batch=batch, repeats=repeats,
                         timestep_spacing=scheduler_config.get("timestep_spacing")),
        "seconds": stats,
        "noises_per_second": rate,
        "ratio": rate["noisefast"] / rate["diffusers_user"],
        "max_abs_score_diff": float((scores["noisefast"].double() - scores["diffusers_user"].double()).abs().max()),
    }
