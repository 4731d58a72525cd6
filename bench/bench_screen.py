"""Throughput of `noisefast screen` on builtin:digits (CPU): vs looping `Engine.select` per prompt, and on Ray.

    python bench/bench_screen.py [--prompts 20] [--seeds 200] [--steps N] [--batch 8] [--ray]
writes bench/results/screen_cpu.{json,md}. Variants, each over the same prompts × seeds and settings:
  * screen   — `noisefast.screen(...)` in process (rows of all prompts share UNet batches, Parquet shards written);
  * select   — `Engine.select(prompt, seeds)` once per prompt (what looping `noisefast select` does, minus
               the process start and the model load per prompt: the fair in-process alternative);
  * ray      — `noisefast.screen(..., ray=True)` on a local Ray instance with 1 actor × 1 thread (the same
               compute as in process: the difference is Ray's overhead; wall includes actor start + model load).
rows/s = rows / wall seconds of the call; for screen also rows / scoring seconds (without summary/setup).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine_info  # noqa: E402

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (and inversion steps); default: the model's")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ray", action="store_true")
    ap.add_argument("--out", default="bench/results/screen_cpu")
    a = ap.parse_args()
    torch.set_num_threads(1)
    import noisefast as nf

    engine = nf.Engine.from_pretrained("builtin:digits")
    prompts = [f"a handwritten digit {WORDS[i % 10]}" + ("" if i < 10 else f", variant {i // 10}")
               for i in range(a.prompts)]  # fmt: skip
    seeds = list(range(a.seeds))
    kw = dict(batch_size=a.batch) | ({"steps": a.steps, "inversion_steps": a.steps} if a.steps else {})
    s = engine.settings(**kw)
    rows = len(prompts) * len(seeds)
    engine.select(prompts[:2], seeds[: a.batch], settings=s)  # warm-up (and the condition cache is per run below)
    tmp = Path(tempfile.mkdtemp(prefix="bench-screen-"))
    res = {}
    loads = [os.getloadavg()]
    try:
        engine._conditions.clear()
        t = time.perf_counter()
        r = nf.screen(prompts, seeds, tmp / "screen", engine=engine, **kw)
        wall = time.perf_counter() - t
        res["screen"] = {"wall_s": wall, "rows_per_s": rows / wall, "score_s": r.seconds, "rows_per_s_scoring": rows / r.seconds}
        print("screen", res["screen"], flush=True)
        loads.append(os.getloadavg())
        engine._conditions.clear()
        t = time.perf_counter()
        for p in prompts:
            engine.select(p, seeds, settings=s)
        wall = time.perf_counter() - t
        res["select_loop"] = {"wall_s": wall, "rows_per_s": rows / wall}
        print("select", res["select_loop"], flush=True)
        loads.append(os.getloadavg())
        if a.ray:
            import ray

            ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            t = time.perf_counter()
            r = nf.screen(prompts, seeds, tmp / "ray", model="builtin:digits", ray=True, threads=1, ray_workers=1, **kw)
            wall = time.perf_counter() - t
            ray.shutdown()
            res["ray_local_1_actor"] = {"wall_s": wall, "rows_per_s": rows / wall, "score_s": r.seconds,
                                        "rows_per_s_scoring": rows / r.seconds}  # fmt: skip
            print("ray", res["ray_local_1_actor"], flush=True)
            loads.append(os.getloadavg())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
           "load_averages": loads, "prompts": len(prompts), "seeds": len(seeds), "rows": rows,
           "settings": s.as_dict(), "threads": 1, "results": res,
           "screen_vs_select": res["screen"]["rows_per_s"] / res["select_loop"]["rows_per_s"]}  # fmt: skip
    if "ray_local_1_actor" in res:
        out["ray_overhead_pct_wall"] = 100 * (res["ray_local_1_actor"]["wall_s"] / res["screen"]["wall_s"] - 1)
        out["ray_overhead_pct_scoring"] = 100 * (res["ray_local_1_actor"]["score_s"] / res["screen"]["score_s"] - 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    md = [f"`noisefast screen` throughput, builtin:digits, {len(prompts)} prompts × {len(seeds)} seeds = {rows} rows, "
          f"DDIM {s.steps}+{s.inversion_steps}, batch {a.batch}, 1 torch thread; {out['date']}; "
          f"{os.cpu_count()} cores, load average (1 min) {', '.join(f'{x[0]:.1f}' for x in loads)} during the runs"
          + (" (shared, loaded machine: ratios are indicative)." if max(x[0] for x in loads) > 1.5 else
             " (idle but for this run)."), "",
          "| variant | wall s | rows/s (wall) | rows/s (scoring only) |", "|---|---:|---:|---:|"]
    for k, v in res.items():
        md.append(f"| {k} | {v['wall_s']:.1f} | {v['rows_per_s']:.2f} | {v.get('rows_per_s_scoring', float('nan')):.2f} |")
    md += ["", f"screen / select loop: **{out['screen_vs_select']:.2f}×**"]
    if "ray_overhead_pct_wall" in out:
        md.append(f"Ray (1 actor) vs in process: {out['ray_overhead_pct_wall']:+.0f}% wall (actor start + model load "
                  f"included), {out['ray_overhead_pct_scoring']:+.0f}% scoring time")
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
