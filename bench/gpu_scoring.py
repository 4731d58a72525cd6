"""GPU scoring matrix: seeds/s of noisefast (plain, and with the fast path) against both diffusers users.

    python -m bench.gpu_scoring --json scoring.json --md scoring.md [--budget-s 170]    # CUDA, fp16
    python -m bench.gpu_scoring --json s.json --md s.md --dry-run                      # CPU, tiny UNet, seconds

Model: the full-size SDXL UNet (``bench/configs/sdxl_unet.json`` = ``../shared/models/sdxl-base-1.0/unet``),
random weights, fp16; SDXL's scheduler config verbatim (``noisefast.testing.SDXL_EULER_SCHEDULER_CONFIG``, read
by DDIMScheduler/DDIMInverseScheduler and by noisefast alike). Configurations × batch 1, 8, 32:
  turbo  512², 1 + 1 steps, trailing spacing, no CFG (guidance 0), inversion guidance 1   — SDXL-Turbo's use
  sdxl   1024², 4 + 4 steps, leading spacing, CFG 5.5, inversion guidance 1
Ways per row (`bench.common.measure_ways`: one untimed run each — warm-up, and the scores compared — then
round-robin runs timed by CUDA events, medians):
  diffusers_user     batch-1 rows: the per-seed UNet + DDIMScheduler / DDIMInverseScheduler loops
  diffusers_batched  batch-8/32 rows: the same loops over ``batch`` seeds at once (the strongest baseline)
  noisefast          `stability_score`, ``batch`` at a time, `UNetDenoiser` on the same UNet
  noisefast_fast     `FastPathOptions.turbo()`: a second copy of the UNet through `prepare_unet` (channels_last,
                     SDPA, fused QKV), the whole chain as one CUDA graph (`GraphedScorer`), pinned seed noise
No row compiles the UNet (compilation costs minutes per shape here), so neither does any baseline.
Rows run most telling first (turbo 8, 32, 1, then sdxl 8, 1, 32); a row whose projected time does not fit what
is left of ``--budget-s`` is skipped and recorded. The JSON is rewritten after every row.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback

import torch

from bench.common import command_line, machine_info, md_table, measure_ways, score_tolerance, write_json, write_text

CONFIGS = {
    "turbo": dict(pixels=512, steps=1, inversion_steps=1, guidance=0.0, inversion_guidance=1.0, spacing="trailing"),
    "sdxl": dict(pixels=1024, steps=4, inversion_steps=4, guidance=5.5, inversion_guidance=1.0, spacing="leading"),
}
ORDER = [("turbo", 8), ("turbo", 32), ("turbo", 1), ("sdxl", 8), ("sdxl", 1), ("sdxl", 32)]


def _seeds_for(config: str, batch: int, dry: bool) -> int:
    """Seeds per timed run: several chunks where a chunk is cheap, one chunk where it is not."""
    if dry:
        return 2 * batch if batch == 1 else batch
    return max(batch, 16) if config == "turbo" else max(batch, 4)


def fast_way(fast_den, scheduler_config: dict, cond, cfg: dict, batch: int, seeds: list[int], opts):
    """A zero-argument scorer of ``seeds`` with the fast path (CUDA graph + pinned noise where ``opts`` say)."""
    from bench.compare_scoring import noisefast_scores
    from noisefast.graphs import GraphedScorer
    from noisefast.schedule import DDIMSchedule

    if not opts.cuda_graph:
        kw = {k: cfg[k] for k in ("pixels", "steps", "inversion_steps", "guidance", "inversion_guidance")}
        return (lambda: noisefast_scores(fast_den, scheduler_config, seeds, cond, batch=batch, **kw)), None
    sched = DDIMSchedule.from_config(scheduler_config, cfg["steps"], cfg["inversion_steps"])
    shape = (fast_den.in_channels, cfg["pixels"] // 8, cfg["pixels"] // 8)
    scorer = GraphedScorer(fast_den, sched, cond, batch, shape, cfg["guidance"], cfg["inversion_guidance"],
                           pinned=opts.pinned, fallback=fast_den.device.type != "cuda")
    return (lambda: scorer.score_seeds(seeds).cpu()), scorer


def measure_row(unet, fast_den, opts, scheduler_config: dict, config: str, batch: int, *, seeds: int,
                repeats: int) -> dict:
    from bench.compare_scoring import noisefast_scores
    from bench.compare_unet import random_condition
    from bench.diffusers_users import unet_loop_scores
    from noisefast.denoisers.unet import UNetDenoiser

    cfg = CONFIGS[config] if unet.device.type == "cuda" else {**CONFIGS[config], "pixels": 64}
    sched_cfg = {**scheduler_config, "timestep_spacing": cfg["spacing"]}
    kw = {k: cfg[k] for k in ("pixels", "steps", "inversion_steps", "guidance", "inversion_guidance")}
    cond = random_condition(unet.config, 1, cfg["pixels"], unet.device, unet.dtype,
                            negative=max(cfg["guidance"], cfg["inversion_guidance"]) > 1)
    seed_list = list(range(seeds))
    t0 = time.perf_counter()
    fast, scorer = fast_way(fast_den, sched_cfg, cond, cfg, batch, seed_list, opts)
    capture_s = time.perf_counter() - t0
    base = "diffusers_user" if batch == 1 else "diffusers_batched"
    plain = UNetDenoiser(unet)
    ways = {base: lambda: unet_loop_scores(unet, sched_cfg, seed_list, cond, batch=batch, **kw),
            "noisefast": lambda: noisefast_scores(plain, sched_cfg, seed_list, cond, batch=batch, **kw),
            "noisefast_fast": fast}
    res = measure_ways(ways, seeds=seeds, repeats=repeats, device=unet.device,
                       tolerance=score_tolerance(unet.dtype, cfg["steps"] + cfg["inversion_steps"]))
    fast_rate, plain_rate = res["noises_per_second"]["noisefast_fast"], res["noises_per_second"]["noisefast"]
    del scorer
    return {"config": config, "batch": batch, "seeds": seeds, "repeats": repeats, **kw,
            "timestep_spacing": cfg["spacing"], "fast_path": opts.as_dict(), "graph_capture_s": capture_s,
            "fast_ratio": fast_rate / res["noises_per_second"][base], "fast_vs_plain": fast_rate / plain_rate, **res}


def headline(rows: list[dict]) -> dict:
    """Per configuration: the best noisefast rate against the best diffusers rate over all measured batches."""
    out = {}
    for config in CONFIGS:
        rs = [r for r in rows if r["config"] == config and "noises_per_second" in r]
        if not rs:
            continue
        best = lambda pred: max(((rate, name, r["batch"]) for r in rs  # noqa: E731
                                 for name, rate in r["noises_per_second"].items() if pred(name)), default=None)
        ours, theirs = best(lambda n: n.startswith("noisefast")), best(lambda n: n.startswith("diffusers"))
        out[config] = {"noisefast": {"way": ours[1], "batch": ours[2], "noises_per_second": ours[0]},
                       "strongest_baseline": {"way": theirs[1], "batch": theirs[2], "noises_per_second": theirs[0]},
                       "ratio": ours[0] / theirs[0]}
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    where = (m["gpu"] or {}).get("name") or m["cpu"]
    rows = []
    for r in result["rows"]:
        if "noises_per_second" not in r:
            rows.append([r["config"], r["batch"], "–", "–", "–", "–", "–", f"skipped: {r.get('skipped') or r.get('error')}"])
            continue
        rate, base = r["noises_per_second"], r["strongest_baseline"]
        rows.append([r["config"], r["batch"], f"{base}: {rate[base]:.2f}", f"{rate['noisefast']:.2f}",
                     f"{rate['noisefast_fast']:.2f}", f"**{r['ratio']:.2f}×** / **{r['fast_ratio']:.2f}×**",
                     f"{r['max_abs_score_diff']:.1e} (tol {r['score_tolerance']:.1e})",
                     f"capture {r['graph_capture_s']:.1f} s"])
    table = md_table(["config", "batch", "diffusers noises/s", "noisefast", "noisefast fast path",
                      "ratio plain / fast", "max |Δscore|", "note"], rows, "lrrrrrll")
    heads = [f"- **{c}**: best noisefast ({h['noisefast']['way']}, batch {h['noisefast']['batch']}) "
             f"{h['noisefast']['noises_per_second']:.2f} vs strongest diffusers ({h['strongest_baseline']['way']}, batch "
             f"{h['strongest_baseline']['batch']}) {h['strongest_baseline']['noises_per_second']:.2f} noises/s: "
             f"**{h['ratio']:.2f}×**" for c, h in result.get("headline", {}).items()]
    return "\n".join([f"## Scoring matrix on {where}", "",
                      f"{m['date']} · `{result['command']}` · torch {m['versions']['torch']}, diffusers "
                      f"{m['versions']['diffusers']} · {result['model']}", "", *heads, "", table]) + "\n"


def run(*, dry: bool, budget_s: float, repeats: int, json_path: str, md_path: str) -> dict:
    from bench.compare_unet import build_unet, sdxl_unet_config
    from noisefast.denoisers.fastpath import FastPathOptions, fast_denoiser
    from noisefast.testing import SDXL_EULER_SCHEDULER_CONFIG, tiny_unet

    deadline = time.perf_counter() + budget_s
    if dry:
        unet, opts = tiny_unet(), FastPathOptions(channels_last=True, attention="sdpa", fuse_qkv=True, cuda_graph=True)
        batches = {1: 1, 8: 2, 32: 4}  # the matrix's shape on tiny sizes
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench.gpu_scoring needs CUDA (or --dry-run)")
        unet, opts, batches = build_unet(sdxl_unet_config(), "cuda", torch.float16), FastPathOptions.turbo(), None
    fast_den = fast_denoiser(copy.deepcopy(unet), opts)
    result = {"benchmark": "noisefast.gpu_scoring", "command": command_line(), "machine": machine_info(),
              "model": f"{'tiny random' if dry else 'SDXL'} UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M "
                       f"parameters, random weights), {str(unet.dtype).replace('torch.', '')}, {unet.device}",
              "settings": dict(dry_run=dry, budget_s=budget_s, repeats=repeats, fast_path=opts.as_dict()), "rows": []}
    last = {}  # config → seconds per seed of the last row measured (projects the next row's cost)
    for config, batch in ORDER:
        b = batches[batch] if dry else batch
        seeds = _seeds_for(config, b, dry)
        where = {"config": config, "batch": b, "seeds": seeds}
        # runs: 3 ways × (1 + repeats) + graph warm-up and capture (2); per-seed cost from the last row of this config
        projected = last.get(config, 0.0) * seeds * (3 * (1 + repeats) + 2) * (2.0 if b == 1 else 1.0)
        left = deadline - time.perf_counter()
        try:
            if left <= 0 or projected > left:
                raise TimeoutError(f"projected {projected:.0f} s, {max(left, 0):.0f} s of the budget left")
            t0 = time.perf_counter()
            row = measure_row(unet, fast_den, opts, SDXL_EULER_SCHEDULER_CONFIG, config, b, seeds=seeds, repeats=repeats)
            row["wall_s"] = time.perf_counter() - t0
            last[config] = row["wall_s"] / (seeds * (3 * (1 + repeats) + 2))
        except TimeoutError as e:
            row = {**where, "skipped": str(e)}
        except torch.OutOfMemoryError as e:
            row = {**where, "skipped": f"out of memory: {str(e).splitlines()[0]}"}
        except Exception as e:  # recorded; the other rows still run
            row = {**where, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result["rows"].append(row)
        result["headline"] = headline(result["rows"])
        write_json(json_path, result)
        write_text(md_path, markdown(result))
        print(f"[gpu_scoring] {config} batch {b}: {row.get('ratio', row.get('skipped') or row.get('error'))}",
              file=sys.stderr, flush=True)
        if unet.device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--budget-s", type=float, default=170.0, help="stop starting rows after this many seconds")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per way (after one untimed)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny UNet, 64², batches 1/2/4: the flow, not numbers")
    a = p.parse_args(argv)
    result = run(dry=a.dry_run, budget_s=a.budget_s, repeats=1 if a.dry_run else a.repeats, json_path=a.json,
                 md_path=a.md)
    print(markdown(result))
    return 1 if any("error" in r for r in result["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
