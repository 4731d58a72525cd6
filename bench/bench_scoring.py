"""Scoring throughput (noises/s): `noisefast.stability_score` vs the way a diffusers user scores today.

Baseline, per seed: one ``StableDiffusionXLPipeline(prompt, generator=Generator("cpu").manual_seed(s),
output_type="latent")`` call (DDIMScheduler), then a ``DDIMInverseScheduler`` loop calling the UNet
(prompt encoded once, outside the loop — generous to the baseline), then the cosine with the seed's noise.
noisefast: the prompt encoded once, ``stability_score`` over all seeds, ``--batch`` candidates per chunk.
Same tiny random SDXL pipeline (saved and loaded back), same steps and guidance, same CPU, one process;
the two are timed alternately, ``--repeats`` times each, after one untimed warm-up; medians reported.
The scores of both must agree (reported as ``max_abs_score_diff``).

    python bench/bench_scoring.py --seeds 16 --steps 4 --size 64 128 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch


def diffusers_user_scores(pipe, prompt, seeds, steps, inversion_steps, guidance, inversion_guidance, height, width):
    """One pipeline call per seed + a DDIMInverseScheduler loop: what one writes with diffusers alone."""
    from diffusers import DDIMInverseScheduler
    from diffusers.utils.torch_utils import randn_tensor

    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(inversion_steps)
    cfg = inversion_guidance > 1
    pe, npe, pooled, npooled = pipe.encode_prompt(prompt, device=torch.device("cpu"), do_classifier_free_guidance=cfg)
    time_ids = pipe._get_add_time_ids(
        (height, width), (0, 0), (height, width), pe.dtype, text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim
    )
    if cfg:
        pe, pooled, time_ids = torch.cat([npe, pe]), torch.cat([npooled, pooled]), torch.cat([time_ids, time_ids])
    latent_shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    scores = []
    for s in seeds:
        x = pipe(
            prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(s), output_type="latent",
        ).images
        with torch.no_grad():
            for t in inverse.timesteps:
                inp = torch.cat([x, x]) if cfg else x
                out = pipe.unet(inp, t, encoder_hidden_states=pe, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
                if cfg:
                    out_u, out_c = out.chunk(2)
                    out = out_u + inversion_guidance * (out_c - out_u)
                x = inverse.step(out, t, x).prev_sample
            noise = randn_tensor(latent_shape, generator=torch.Generator("cpu").manual_seed(s), dtype=pe.dtype)
            scores.append(torch.nn.functional.cosine_similarity(noise.flatten(), x.flatten(), dim=0).item())
    return torch.tensor(scores)


def noisefast_scores(pipe, prompt, seeds, steps, inversion_steps, guidance, inversion_guidance, height, width, batch):
    """Encode once, then batched, chunked `stability_score` over the seeds' noise."""
    from noisefast.denoisers.unet import UNetDenoiser
    from noisefast.prompts import SDXLPromptEncoder
    from noisefast.schedule import DDIMSchedule
    from noisefast.seeds import noise_from_seeds
    from noisefast.stability import stability_score

    cond = SDXLPromptEncoder(pipe)(prompt, height=height, width=width, with_negative=max(guidance, inversion_guidance) > 1)
    sched = DDIMSchedule.from_config(pipe.scheduler.config, steps, inversion_steps)
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    noise = noise_from_seeds(seeds, shape, dtype=cond.prompt_embeds.dtype)
    return stability_score(UNetDenoiser(pipe.unet), sched, noise, cond, guidance, inversion_guidance, max_batch=batch)


def run(seeds=16, steps=4, inversion_steps=None, guidance=5.0, inversion_guidance=1.0, size=128, batch=16, repeats=3, prompt="a red fox in the snow"):
    """Measure both ways in this process; returns a JSON-ready dict."""
    import diffusers

    from noisefast.testing import tiny_sdxl_pipeline

    inversion_steps = inversion_steps or steps
    seed_list = list(range(seeds))
    with tempfile.TemporaryDirectory() as folder:
        pipe = tiny_sdxl_pipeline(folder)
    args = (pipe, prompt, seed_list, steps, inversion_steps, guidance, inversion_guidance, size, size)
    ways = {
        "diffusers_user": lambda: diffusers_user_scores(*args),
        "noisefast": lambda: noisefast_scores(*args, batch),
    }
    scores = {name: fn() for name, fn in ways.items()}  # warm-up, and the scores to compare
    times = {name: [] for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    rate = {name: seeds / med[name] for name in ways}
    return {
        "benchmark": "scoring_throughput",
        "model": f"tiny random SDXL pipeline (noisefast.testing), latents 4x{size // 8}x{size // 8}",
        "settings": dict(seeds=seeds, steps=steps, inversion_steps=inversion_steps, guidance=guidance,
                         inversion_guidance=inversion_guidance, height=size, width=size, batch=batch, repeats=repeats),
        "seconds": times,
        "median_seconds": med,
        "noises_per_second": rate,
        "ratio": rate["noisefast"] / rate["diffusers_user"],
        "max_abs_score_diff": float((scores["noisefast"].double() - scores["diffusers_user"].double()).abs().max()),
        "machine": dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                        torch_threads=torch.get_num_threads()),
        "versions": dict(python=sys.version.split()[0], torch=torch.__version__, diffusers=diffusers.__version__),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=16, help="candidate noises per measurement")
    p.add_argument("--steps", type=int, default=4, help="denoising steps")
    p.add_argument("--inversion-steps", type=int, default=None, help="inversion steps (default: --steps)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--inversion-guidance", type=float, default=1.0)
    p.add_argument("--size", type=int, nargs="+", default=[64, 128], help="image height = width (latents size/8); several: one run each")
    p.add_argument("--batch", type=int, default=16, help="noisefast candidates per chunk")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH", help="write JSON (stdout if no PATH)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    runs = [run(a.seeds, a.steps, a.inversion_steps, a.guidance, a.inversion_guidance, size, a.batch, a.repeats) for size in a.size]
    res = {"benchmark": "scoring_throughput", "runs": runs}
    if a.json == "-":
        print(json.dumps(res, indent=2))
        return
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    for r in runs:
        rate = r["noises_per_second"]
        print(f"{r['settings']['height']}px: diffusers user {rate['diffusers_user']:.2f} noises/s, noisefast "
              f"{rate['noisefast']:.2f} noises/s, ratio {r['ratio']:.2f}x (max |Δscore| {r['max_abs_score_diff']:.1e})")


if __name__ == "__main__":
    main()
