"""``noisefast bench screen``: rows/s of the screening job (`noisefast.screen`) on P prompts × K seeds, against
looping ``Engine.select`` per prompt, and on Ray.

Variants, each over the same prompts, seeds and settings, alternated over ``rounds`` rounds:
  screen        ``noisefast.screen(..., engine=engine)`` in process: rows of all prompts share UNet batches, Parquet
                shards written (a fresh output folder per round);
  select loop   ``engine.select(prompt, seeds)`` once per prompt: what looping ``noisefast select`` does, minus the
                process start and the model load per prompt — the fair in-process alternative;
  ray           ``noisefast.screen(..., config=config, ray=True)`` on a local Ray instance with ``ray_workers``
                actors (wall includes actor start and model load; with one actor of the same threads, the
                difference to ``screen`` is Ray's overhead).
The prompts are encoded once before the first round (all variants find them cached; Ray's actors encode their own).
rows/s = rows / wall seconds of the call; for the screens also rows / scoring seconds (without setup and summary).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_prompts(n: int) -> list[str]:
    return [f"a handwritten digit {WORDS[i % 10]}" + ("" if i < 10 else f", variant {i // 10}") for i in range(n)]


def measure(run, engine, config, *, prompts: list[str], seeds: list[int], s, rounds: int, ray: bool,
            ray_workers: int, threads: int) -> None:
    from noisefast.screen import screen

    rows = len(prompts) * len(seeds)
    settings = {k: v for k, v in s.as_dict().items() if k != "batch_size"}
    tmp = Path(tempfile.mkdtemp(prefix="noisefast-bench-screen-"))
    wall = {"screen": [], "select loop": []} | ({"ray": []} if ray else {})
    scoring = {k: [] for k in wall if k != "select loop"}
    try:
        with run.part("warm-up"):
            engine.select_many(prompts, seeds[:1], settings=s)
            if ray:
                import ray as ray_

                if not ray_.is_initialized():
                    ray_.init(num_cpus=ray_workers * threads, include_dashboard=False, logging_level="ERROR",
                              log_to_driver=False)  # fmt: skip
        for r in range(rounds):
            with run.part(f"round {r + 1}"):
                t = time.perf_counter()
                res = screen(prompts, seeds, tmp / f"screen-{r}", engine=engine, settings=settings)
                wall["screen"].append(time.perf_counter() - t)
                scoring["screen"].append(res.seconds)
                t = time.perf_counter()
                for p in prompts:
                    engine.select(p, seeds, settings=s)
                wall["select loop"].append(time.perf_counter() - t)
                if ray:
                    t = time.perf_counter()
                    res = screen(prompts, seeds, tmp / f"ray-{r}", config=config.replace(threads=threads), ray=True,
                                 ray_workers=ray_workers, settings=settings)  # fmt: skip
                    wall["ray"].append(time.perf_counter() - t)
                    scoring["ray"].append(res.seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if ray:
            import ray as ray_

            ray_.shutdown()
    stat = run.result["timing"]["statistic"]
    out = run.results
    out.update(prompts=len(prompts), seeds=len(seeds), rows=rows, settings=s.as_dict(), variants={})
    for name, ws in wall.items():
        if len(ws) < rounds:  # a round failed (recorded)
            continue
        v = {"wall_s": run.add("screen", f"{name} wall", ws, per=rows, per_unit="row")[stat]}
        v["rows_per_s"] = rows / v["wall_s"]
        if name in scoring:
            v["score_s"] = run.add("screen", f"{name} scoring", scoring[name], per=rows, per_unit="row")[stat]
            v["rows_per_s_scoring"] = rows / v["score_s"]
        out["variants"][name] = v
    var = out["variants"]
    if "screen" in var and "select loop" in var:
        out["screen_vs_select"] = var["screen"]["rows_per_s"] / var["select loop"]["rows_per_s"]
    if "screen" in var and "ray" in var:
        out["ray_overhead_pct_wall"] = 100 * (var["ray"]["wall_s"] / var["screen"]["wall_s"] - 1)
        out["ray_overhead_pct_scoring"] = 100 * (var["ray"]["score_s"] / var["screen"]["score_s"] - 1)
