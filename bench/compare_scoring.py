"""Part 2 of `bench.compare` where no text encoders or VAE are at hand (the full-size SDXL UNet on a GPU).

The diffusers users are what one writes around the UNet alone (`bench.diffusers_users.unet_loop_scores`: the
loop inside ``StableDiffusionXLPipeline.__call__`` with ``output_type="latent"``, then a
``DDIMInverseScheduler`` loop, then the cosine with the seed's noise):

  diffusers_user      one seed at a time (what the pipeline's documentation shows)
  diffusers_batched   ``batch`` seeds at a time (one CPU generator per seed: each row is that seed's draw)
  diffusers_batched_compile  the same with ``torch.compile(unet)`` (``compile_baseline``; compiled in the
                      untimed warm-up) — the strongest a careful user writes
The headline ratio is against the fastest baseline.

The prompt embeddings are random tensors of the right shapes, made once (as if encoded once, outside the
loop — generous to the baselines). noisefast runs `stability_score` on all seeds' noise, ``batch`` at a time,
with the same UNet, condition, scheduler settings and dtype, on ``backend`` (``"auto"``: decided in the untimed
warm-up in a fresh cache folder, and reported; ``noisefast_torch`` is then eager torch beside it). With
``compile_unet`` noisefast uses the compile backend and every baseline ``torch.compile``s its UNet the same way. All are timed round-robin, whole runs; the
scores of every baseline are compared with noisefast's against `bench.common.score_tolerance`.
"""

from __future__ import annotations

import torch

from bench.common import measure_ways, score_tolerance
from bench.diffusers_users import unet_loop_scores


def noisefast_scores(den, scheduler_config: dict, seeds, cond, *, pixels: int, steps: int, inversion_steps: int,
                     guidance: float, inversion_guidance: float, batch: int) -> torch.Tensor:  # [K] float32 on CPU
    """The same scores with noisefast: the seeds' noise drawn at once, `stability_score` ``batch`` at a time.

    ``den``: a `UNetDenoiser` or any denoiser with ``in_channels``, ``dtype`` and ``device`` (compile backend,
    `noisefast.denoisers.fastpath.FastPathDenoiser`).
    """
    from noisefast.schedule import DDIMSchedule
    from noisefast.seeds import noise_from_seeds
    from noisefast.stability import stability_score

    sched = DDIMSchedule.from_config(scheduler_config, steps, inversion_steps)
    noise = noise_from_seeds(seeds, (den.in_channels, pixels // 8, pixels // 8), dtype=den.dtype, device=den.device)
    with torch.inference_mode():
        s = stability_score(den, sched, noise, cond, guidance, inversion_guidance, max_batch=batch)
    return s.float().cpu()


def scoring_unet_loop(unet, scheduler_config: dict, *, seeds: int, pixels: int, steps: int, inversion_steps: int,
                      guidance: float, inversion_guidance: float, batch: int, repeats: int, compile_unet: bool = False,
                      per_seed: bool = True, extra_ways: dict | None = None, cond=None, backend: str = "torch",
                      compile_baseline: bool = False) -> dict:
    """noises/s of the diffusers users and noisefast (one untimed run each, then ``repeats`` round-robin runs).

    ``extra_ways``: more named zero-argument scorers of ``seeds`` seeds to time in the same rounds (noisefast with
    fast-path options: names start with ``"noisefast"``; more baselines: with ``"diffusers"``). ``per_seed=False``
    drops the per-seed user (when K UNet calls of batch 1 do not fit the time budget).
    """
    import tempfile

    from bench.compare_unet import random_condition
    from noisefast.denoisers.backends import make_denoiser

    device = unet.device
    if cond is None:
        cond = random_condition(unet.config, 1, pixels, device, unet.dtype,
                                negative=max(guidance, inversion_guidance) > 1)
    kw = dict(pixels=pixels, steps=steps, inversion_steps=inversion_steps, guidance=guidance,
              inversion_guidance=inversion_guidance)
    seed_list = list(range(seeds))
    cache = tempfile.TemporaryDirectory(prefix="noisefast-bench-cache-")
    backend = "compile" if compile_unet else backend
    den = make_denoiser(unet, backend, **({} if backend == "torch" else {"cache_dir": cache.name}))
    base = dict(compile_unet=compile_unet, **kw)
    ways = {}
    if per_seed:
        ways["diffusers_user"] = lambda: unet_loop_scores(unet, scheduler_config, seed_list, cond, batch=1, **base)
    ways["diffusers_batched"] = lambda: unet_loop_scores(unet, scheduler_config, seed_list, cond, batch=batch, **base)
    if compile_baseline and not compile_unet:
        ways["diffusers_batched_compile"] = lambda: unet_loop_scores(unet, scheduler_config, seed_list, cond,
                                                                     batch=batch, **{**base, "compile_unet": True})
    ways["noisefast"] = lambda: noisefast_scores(den, scheduler_config, seed_list, cond, batch=batch, **kw)
    if backend == "auto":
        eager = make_denoiser(unet, "torch")
        ways["noisefast_torch"] = lambda: noisefast_scores(eager, scheduler_config, seed_list, cond, batch=batch, **kw)
    ways.update(extra_ways or {})
    with cache:
        res = measure_ways(ways, seeds=seeds, repeats=repeats, device=device,
                           tolerance=score_tolerance(unet.dtype, steps + inversion_steps))
        if backend == "auto":
            res["noisefast_backend"] = den.describe()
    return {
        "baseline": "UNet + DDIMScheduler loop, then UNet + DDIMInverseScheduler loop (random prompt embeddings): "
                    + ("per seed (diffusers_user) and " if per_seed else "")
                    + f"{batch} seeds per batch (diffusers_batched)" + (", torch.compile" if compile_unet else "")
                    + (", the same with torch.compile (diffusers_batched_compile)" if compile_baseline else ""),
        "model": f"UNet2DConditionModel ({sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters, random "
                 f"weights), {str(unet.dtype).replace('torch.', '')}, {device}",
        "settings": dict(seeds=seeds, height=pixels, width=pixels, steps=steps, inversion_steps=inversion_steps,
                         guidance=guidance, inversion_guidance=inversion_guidance, batch=batch, repeats=repeats,
                         timestep_spacing=scheduler_config.get("timestep_spacing"), compile=compile_unet,
                         backend=backend),
        **res,
    }
