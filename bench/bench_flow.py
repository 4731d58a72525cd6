"""Scoring throughput (noises/s) on flow-matching models (tiny random SD3, FLUX.1-dev, FLUX.1-schnell pipelines).

Ways, for each family (same pipeline folder, same seeds, steps, guidance and size, one process):
  noisefast          ``Engine.score(prompt, seeds)``: the prompt encoded once (cached), D and I in shared batches
  diffusers_batched  the careful diffusers user: the prompt encoded once outside the loop; the seeds' noise drawn
                     with the pipeline's own ``prepare_latents`` (FLUX: packed); one ``StableDiffusion3Pipeline`` /
                     ``FluxPipeline(..., latents=, output_type="latent")`` call for all seeds (D); then a
                     hand-written batched Euler inversion over the scheduler's σ (I: σ ascending, the conditional
                     velocity at the current point, as noisefast inverts); the cosine per row
The scores must agree (``score_diff_vs_noisefast`` within ``score_tolerance``): the baseline is also an independent
implementation of s(ε) = cos(ε, I(D(ε))) for these models. One untimed warm-up each, ``--repeats`` round-robin runs.

    python bench/bench_flow.py --seeds 16 --steps 4 --size 64 --json bench/results/flow_cpu.json --md bench/results/flow_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from noisefast.bench.machine import git_commit, load_average, machine_info, now_iso, versions
from noisefast.bench.stats import summarize
from noisefast.bench.tables import md_table
from noisefast.bench.timing import time_round_robin

FAMILIES = {"sd3": 7.0, "flux-dev": 3.5, "flux-schnell": 0.0}  # guidance: CFG / embedded / none


def build(root: Path, family: str) -> Path:
    from noisefast.testing import tiny_flux_pipeline, tiny_sd3_pipeline

    folder = root / family
    if family == "sd3":
        tiny_sd3_pipeline(folder)
    else:
        tiny_flux_pipeline(folder, guidance_embeds=family == "flux-dev")
    return folder


@torch.no_grad()
def diffusers_batched(pipe, prompt: str, steps: int, guidance: float, size: int):
    """The careful user's scorer: the prompt encoded once here; ``score(seeds)`` runs D with the stock pipeline for
    all seeds at once, then a batched Euler inversion written by hand, then the cosine per row."""
    from diffusers import FluxPipeline

    flux, tr = isinstance(pipe, FluxPipeline), pipe.transformer
    if flux:
        pe, pooled, txt_ids = pipe.encode_prompt(prompt, None, device="cpu")
        npe = npooled = None
    else:
        pe, npe, pooled, npooled = pipe.encode_prompt(prompt, None, None, device="cpu",
                                                      do_classifier_free_guidance=guidance > 1)  # fmt: skip

    @torch.no_grad()
    def score(seeds) -> torch.Tensor:  # [K]
        K = len(seeds)
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        rep = lambda t: None if t is None else t.expand(K, *t.shape[1:])  # noqa: E731  (one row per seed)
        kw = dict(height=size, width=size, num_inference_steps=steps, guidance_scale=guidance, output_type="latent")
        if flux:
            eps, img_ids = pipe.prepare_latents(K, tr.config.in_channels // 4, size, size, pe.dtype, "cpu", gens)
            x = pipe(prompt_embeds=rep(pe), pooled_prompt_embeds=rep(pooled), latents=eps, **kw).images
            g = torch.full((K,), guidance, dtype=torch.float32) if tr.config.guidance_embeds else None

            def velocity(x, t):
                return tr(hidden_states=x, timestep=t.expand(K).to(x.dtype) / 1000, guidance=g,
                          pooled_projections=rep(pooled), encoder_hidden_states=rep(pe), txt_ids=txt_ids,
                          img_ids=img_ids, return_dict=False)[0]  # fmt: skip
        else:
            eps = pipe.prepare_latents(K, tr.config.in_channels, size, size, pe.dtype, "cpu", gens)
            x = pipe(prompt_embeds=rep(pe), negative_prompt_embeds=rep(npe), pooled_prompt_embeds=rep(pooled),
                     negative_pooled_prompt_embeds=rep(npooled), latents=eps, **kw).images  # fmt: skip

            def velocity(x, t):
                return tr(hidden_states=x, timestep=t.expand(K), encoder_hidden_states=rep(pe),
                          pooled_projections=rep(pooled), return_dict=False)[0]  # fmt: skip
        sigmas = pipe.scheduler.sigmas  # σ_0 > … > σ_n = 0, float32
        for i in reversed(range(steps)):  # I: σ_{i+1} → σ_i, the conditional velocity where the move starts
            s_from, s_to = sigmas[i + 1], sigmas[i]
            x = x + (s_to - s_from) * velocity(x, s_from * 1000)
        return torch.nn.functional.cosine_similarity(eps.flatten(1), x.flatten(1), dim=1)

    return score


def measure_ways(ways, *, seeds: int, repeats: int, tolerance: float) -> dict:
    """noises/s of each way (one untimed call each — also the scores compared —, then ``repeats`` round-robin runs)
    and how the baseline's scores agree with noisefast's."""
    scores = {name: fn().double().cpu() for name, fn in ways.items()}
    seconds = {name: summarize(ts) for name, ts in time_round_robin(ways, repeats, warmup=0).items()}
    rate = {name: seeds / s["median"] for name, s in seconds.items()}
    diff = float((scores["diffusers_batched"] - scores["noisefast"]).abs().max())
    return {"seconds": seconds, "noises_per_second": rate, "ratio": rate["noisefast"] / rate["diffusers_batched"],
            "max_abs_score_diff": diff, "score_tolerance": tolerance, "scores_agree": diff <= tolerance}  # fmt: skip


def run(seeds=16, steps=4, size=64, repeats=3, prompt="a red fox in the snow", families=tuple(FAMILIES)):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from noisefast.pipeline import Engine

    machine = machine_info() | {"date": now_iso(), "versions": versions(), "git": git_commit(),
                                "load_average_1m": (load_average() or (float("nan"),))[0]}  # before the runs
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            folder = build(Path(tmp), family)
            w = FAMILIES[family]
            engine = Engine.from_pretrained(folder)
            s = engine.settings(height=size, width=size, steps=steps, inversion_steps=steps, guidance_scale=w,
                                batch_size=seeds)  # fmt: skip
            pipe = (StableDiffusion3Pipeline if family == "sd3" else FluxPipeline).from_pretrained(folder)
            pipe.set_progress_bar_config(disable=True)
            user = diffusers_batched(pipe, prompt, steps, w, size)
            engine.condition(prompt, settings=s)  # encoded once, as the user's
            ways = {"noisefast": lambda: engine.score(prompt, list(range(seeds)), settings=s),  # noqa: B023
                    "diffusers_batched": lambda: user(range(seeds))}  # noqa: B023
            # float32 round-off of two implementations of the same 2N transformer calls (CFG amplifies it by 1 + w)
            tol = 2 * 64 * 2.0**-24 * 2 * steps * (1 + w)
            results[family] = measure_ways(ways, seeds=seeds, repeats=repeats, tolerance=tol) | {"guidance": w}
    machine["load_average_1m_end"] = os.getloadavg()[0]
    return {"machine": machine, "command": "python " + shlex.join(sys.argv),
            "settings": {"seeds": seeds, "steps": steps, "inversion_steps": steps, "size": size, "repeats": repeats},
            "families": results}  # fmt: skip


def markdown(res: dict) -> str:
    m, st = res["machine"], res["settings"]
    rows = []
    for family, r in res["families"].items():
        rate = r["noises_per_second"]
        sec = r["seconds"]
        rows.append([family, f"{r['guidance']:g}", f"{rate['diffusers_batched']:.2f}", f"{rate['noisefast']:.2f}",
                     f"{r['ratio']:.2f}×", f"{sec['diffusers_batched']['min']:.2f} / {sec['noisefast']['min']:.2f}",
                     f"{r['max_abs_score_diff']:.1e}", "yes" if r["scores_agree"] else "NO"])
    return (f"Flow-model scoring on tiny random pipelines: {st['seeds']} seeds, {st['steps']}+{st['inversion_steps']} "
            f"Euler steps, {st['size']}², one batch; {m['date']}; {m['cpu']} ({m['cores']} cores), torch threads "
            f"{m['torch_threads']}, load average {m['load_average_1m']:.2f} at start, {m['load_average_1m_end']:.2f} at "
            f"the end; medians of {st['repeats']} round-robin runs.\n\n`{res['command']}`\n\n"
            + md_table(["family", "guidance", "stock pipeline + hand-written inversion, noises/s", "noisefast, noises/s",
                        "ratio (medians)", "fastest run, s (stock / noisefast)", "max |Δ score|", "scores agree"], rows)
            + "\n")  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json")
    ap.add_argument("--md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.seeds, args.steps, args.size, args.repeats)
    text = markdown(res)
    print(text)
    for path, body in ((args.json, json.dumps(res, indent=1, default=str)), (args.md, text)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(body + "\n")


if __name__ == "__main__":
    main()
