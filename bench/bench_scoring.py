"""Scoring throughput (noises/s): `noisefast.stability_score` vs the ways a diffusers user scores today.

Baselines (`bench.diffusers_users.pipeline_scores`), with the prompt encoded once, outside the loop (generous):
  diffusers_user     per seed: one ``StableDiffusionXLPipeline(prompt, generator=Generator("cpu").manual_seed(s),
                     output_type="latent")`` call (DDIMScheduler), a ``DDIMInverseScheduler`` loop, the cosine
  diffusers_batched  ``--batch`` seeds per pipeline call (``num_images_per_prompt``, one generator per seed, so
                     each row is that seed's draw), one batched inversion loop, the cosine per row
  diffusers_batched_compile  the same with ``pipe.unet = torch.compile(pipe.unet)`` (compiled in the untimed
                     warm-up) — the strongest a careful user writes; the headline ``ratio`` is against the
                     fastest baseline (``ratio_vs`` has each)
noisefast: the prompt encoded once, ``stability_score`` over all seeds, ``--batch`` candidates per chunk, on the
``auto`` backend (the default; its decision is taken in the untimed warm-up, in a fresh cache folder, and
reported) — ``noisefast_torch`` is the same on eager torch.
Same tiny random SDXL pipeline (saved and loaded back), same steps and guidance, same CPU, one process; one
untimed warm-up each, then ``--repeats`` round-robin timed runs; medians reported. The scores must agree
(``score_diff_vs_noisefast`` against ``score_tolerance``, `bench.common.score_tolerance`).

    python bench/bench_scoring.py --seeds 16 --steps 4 --size 64 128 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script (python bench/bench_scoring.py): make the bench package importable
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, machine_info, measure_ways, score_tolerance, write_json  # noqa: E402
from bench.diffusers_users import pipeline_scores  # noqa: E402


def noisefast_scores(den, pipe, prompt, seeds, steps, inversion_steps, guidance, inversion_guidance, height, width,
                     batch):
    """Encode once, then batched, chunked `stability_score` over the seeds' noise on denoiser ``den``."""
    from noisefast.prompts import SDXLPromptEncoder
    from noisefast.schedule import DDIMSchedule
    from noisefast.seeds import noise_from_seeds
    from noisefast.stability import stability_score

    cond = SDXLPromptEncoder(pipe)(prompt, height=height, width=width, with_negative=max(guidance, inversion_guidance) > 1)
    sched = DDIMSchedule.from_config(pipe.scheduler.config, steps, inversion_steps)
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    noise = noise_from_seeds(seeds, shape, dtype=cond.prompt_embeds.dtype)
    with torch.inference_mode():
        return stability_score(den, sched, noise, cond, guidance, inversion_guidance, max_batch=batch)


def run(seeds=16, steps=4, inversion_steps=None, guidance=5.0, inversion_guidance=1.0, size=128, batch=16, repeats=3,
        prompt="a red fox in the snow", compile_baseline=True):
    """Measure every way in this process; returns a JSON-ready dict."""
    from noisefast.denoisers.backends import make_denoiser
    from noisefast.testing import tiny_sdxl_pipeline

    inversion_steps = inversion_steps or steps
    seed_list = list(range(seeds))
    with tempfile.TemporaryDirectory() as folder:
        pipe = tiny_sdxl_pipeline(folder)
    kw = dict(steps=steps, inversion_steps=inversion_steps, guidance=guidance, inversion_guidance=inversion_guidance,
              height=size, width=size)
    cache = tempfile.TemporaryDirectory(prefix="noisefast-bench-cache-")
    auto, eager = make_denoiser(pipe.unet, "auto", cache_dir=cache.name), make_denoiser(pipe.unet, "torch")
    nf_args = (pipe, prompt, seed_list, steps, inversion_steps, guidance, inversion_guidance, size, size, batch)
    ways = {
        "diffusers_user": lambda: pipeline_scores(pipe, prompt, seed_list, batch=1, **kw),
        "diffusers_batched": lambda: pipeline_scores(pipe, prompt, seed_list, batch=batch, **kw),
        "noisefast": lambda: noisefast_scores(auto, *nf_args),
        "noisefast_torch": lambda: noisefast_scores(eager, *nf_args),
    }
    if compile_baseline:
        ways["diffusers_batched_compile"] = lambda: pipeline_scores(pipe, prompt, seed_list, batch=batch,
                                                                    compile_unet=True, **kw)
    with cache:
        res = measure_ways(ways, seeds=seeds, repeats=repeats,
                           tolerance=score_tolerance(pipe.unet.dtype, steps + inversion_steps))
        res["noisefast_backend"] = auto.describe()
    return {
        "benchmark": "scoring_throughput",
        "baseline": "StableDiffusionXLPipeline(output_type='latent') + DDIMInverseScheduler loop: per seed "
                    f"(diffusers_user), {batch} seeds per call (diffusers_batched)"
                    + (", the same with torch.compile(pipe.unet) (diffusers_batched_compile)" if compile_baseline else ""),
        "model": f"tiny random SDXL pipeline (noisefast.testing), latents 4x{size // 8}x{size // 8}",
        "settings": dict(seeds=seeds, steps=steps, inversion_steps=inversion_steps, guidance=guidance,
                         inversion_guidance=inversion_guidance, height=size, width=size, batch=batch, repeats=repeats),
        **res,
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
    res = {"benchmark": "scoring_throughput", "command": command_line(), "machine": machine_info(), "runs": runs}
    if a.json == "-":
        print(json.dumps(res, indent=2, default=str))
        return
    if a.json:
        write_json(a.json, res)
    for r in runs:
        rate, vs = r["noises_per_second"], r["ratio_vs"]
        print(f"{r['settings']['height']}px: noises/s diffusers per seed {rate['diffusers_user']:.2f}, batched "
              f"{rate['diffusers_batched']:.2f}, noisefast {rate['noisefast']:.2f}; noisefast vs batched "
              f"{vs['diffusers_batched']:.2f}x, vs per seed {vs['diffusers_user']:.2f}x "
              f"(max |Δscore| {r['max_abs_score_diff']:.1e}, tolerance {r['score_tolerance']:.1e})")


if __name__ == "__main__":
    main()
