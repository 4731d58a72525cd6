"""``noisefast bench scoring``: noises/s of noisefast against the diffusers users (`noisefast.bench.users`), same model,
device, dtype, prompt, seeds and settings, all ways timed in the same alternated rounds.

Ways (each scores all K seeds and returns their [K] scores):
  diffusers pipeline per seed | batched | batched + compile      the stock pipeline (SDXL-architecture models)
  diffusers UNet loop per seed | batched | batched + compile     the loops around the UNet alone (any model)
  noisefast                                                      ``engine.score(prompt, seeds)`` of the Engine built
                                                                 from the command's `EngineConfig`
  noisefast [VARIANT]                                            the same with another backend or the fast path
"batched" = the engine's rows per UNet batch for these settings. One untimed run of every way first (the warm-up,
compilation included; its scores are compared), then ``rounds`` alternated timed runs. Rates: K / seconds per run
(`noisefast.bench.stats.headline`: best of N on a CPU, the median of CUDA-event timings on a GPU). The strongest
baseline is the fastest diffusers way; every way's scores must agree with noisefast's within `score_tolerance`.
"""

from __future__ import annotations

import torch

from noisefast.bench.models import unet_dtype
from noisefast.bench.stats import headline
from noisefast.bench.timing import time_round_robin
from noisefast.bench.ways import variant_name, way_name

SCORE_ULPS_PER_CALL = 16  # error model of `score_tolerance`


def score_tolerance(dtype: torch.dtype, unet_calls: int) -> float:
    """How far two correct implementations' stability scores may differ: 16 units of ``dtype``'s rounding per UNet
    call, added over the chain.

    Error model: each UNet call returns its output with a relative error of a few ε of its storage dtype (other
    batch sizes, kernels or summation orders round differently); a DDIM move is affine, so those errors reach the
    returned latent scaled by O(1) coefficients and add up over the calls; a cosine moves by at most the relative
    error of its argument. fp32: 1.9e-6 per call; fp16: 1.6e-2 per call.
    """
    return SCORE_ULPS_PER_CALL * torch.finfo(dtype).eps * max(int(unet_calls), 1)


def diffusers_ways(model, prompt: str, seeds: list[int], s, batch: int, users, through) -> dict:
    """Zero-argument scorers of ``seeds`` for each requested (through, user) the model allows."""
    from noisefast.bench import users as u

    kw = dict(steps=s.steps, inversion_steps=s.inversion_steps, guidance=s.guidance_scale,
              inversion_guidance=s.inversion_guidance_scale)  # fmt: skip
    ways = {}
    for t in through:
        for user in users:
            rows, comp = (1, False) if user == "per-seed" else (batch, user == "compiled")
            if t == "pipeline":
                ways[way_name(t, user)] = (lambda rows=rows, comp=comp: u.pipeline_scores(
                    model.pipe, prompt, seeds, height=s.height, width=s.width, batch=rows, compile_unet=comp, **kw))
            else:
                f = model.spatial_factor
                shape = (int(model.unet.config.in_channels), s.height // f, s.width // f)
                e = u.Embeds.from_condition(model.encoder([prompt], None, height=s.height, width=s.width,
                                                          with_negative=True))  # fmt: skip
                ways[way_name(t, user)] = (lambda rows=rows, comp=comp, e=e, shape=shape: u.unet_loop_scores(
                    model.unet, model.scheduler_config, seeds, e, shape=shape, batch=rows, compile_unet=comp, **kw))
    return ways


def measure(run, engine, plain, variants: dict, *, prompt: str, seeds: list[int], s, users, through, rounds: int,
            group: str = "scoring") -> dict | None:
    """Times every way into ``run`` under ``group``; returns rates, ratios against each baseline and the score
    agreement (None when a part failed: recorded in ``run``'s errors)."""
    batch = engine.batch_size_for(s)
    calls = s.steps + s.inversion_steps
    ways = diffusers_ways(plain, prompt, seeds, s, batch, users, through)
    ways["noisefast"] = lambda: engine.score(prompt, seeds, settings=s).float().cpu()
    for name, e in variants.items():
        ways[variant_name(name)] = lambda e=e: e.score(prompt, seeds, settings=s).float().cpu()
    scores, times = {}, {}
    with run.part(f"{group}: warm-up and scores"):
        for name, fn in ways.items():
            print(f"  {name}: first run (untimed)", flush=True)
            scores[name] = fn().double()
        times = time_round_robin(ways, rounds, device=engine.device, warmup=0)
    if not times:
        return None
    stat, k = run.result["timing"]["statistic"], len(seeds)
    # each way against noisefast, in the coarser of the two UNet dtypes (the fast path may run fp16)
    dtypes = {name: unet_dtype(e) for name, e in {"noisefast": engine, **{variant_name(n): e for n, e in
                                                                            variants.items()}}.items()}  # fmt: skip
    coarser = lambda a, b: a if torch.finfo(a).eps >= torch.finfo(b).eps else b  # noqa: E731
    tol, rate, diff = {}, {}, {}
    for name in ways:
        summary = run.add(group, name, times[name], per=k, per_unit="seed")
        rate[name] = k / headline(summary, stat)
        if name != "noisefast":
            diff[name] = float((scores[name] - scores["noisefast"]).abs().max())
            tol[name] = score_tolerance(coarser(dtypes.get(name, plain.dtype), dtypes["noisefast"]), calls)
    baselines = [n for n in ways if n.startswith("diffusers")]
    ours = [n for n in ways if n.startswith("noisefast")]
    strongest = max(baselines, key=rate.__getitem__) if baselines else None
    res = dict(seeds=k, batch=batch, unet_calls=calls, noises_per_second=rate, baselines=baselines, noisefast=ours,
               strongest_baseline=strongest, score_diff_vs_noisefast=diff, score_tolerance=tol,
               scores_agree=all(diff[n] <= tol[n] for n in diff), settings=s.as_dict())  # fmt: skip
    if strongest is not None:
        res["ratio"] = rate["noisefast"] / rate[strongest]
        res["ratio_vs"] = {n: {b: rate[n] / rate[b] for b in baselines} for n in ours}
        best = max(ours, key=rate.__getitem__)
        res["targets"] = [{"what": f"scoring throughput vs the strongest diffusers user ({strongest})", "goal": "≥ 3×",
                           "value": rate[best] / rate[strongest], "unit": "×", "way": best,
                           "met": rate[best] / rate[strongest] >= 3}]  # fmt: skip
    for name in diff:
        if diff[name] > tol[name]:
            run.warn(f"{group}: scores disagree: {name} differs from noisefast by {diff[name]:.2e} (> {tol[name]:.1e}, "
                     f"the error model for {calls} UNet calls)")  # fmt: skip
    return res
