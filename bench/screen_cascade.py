"""How well a short proxy schedule ranks seeds like the full one (the `noisefast screen` cascade), on builtin:digits.

For each proxy N (N + N DDIM steps) vs the model's default schedule (10 + 10): Spearman ρ between the proxy
and full scores per prompt, and the recall of the full schedule's top-T seeds among the proxy's top M.
Every (prompt, seed) goes through `Engine.select` over all prompts at once (shared UNet batches).

    python bench/screen_cascade.py [--prompts 10] [--seeds 200] [--proxies 1,2,4] [--top 10] [--m 20,50]
writes bench/results/screen_cascade.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from noisefast.bench.machine import machine_info, versions

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def scores(engine, prompts, seeds, steps, batch):
    t = time.perf_counter()
    sels = engine.select(prompts, seeds, steps=steps, inversion_steps=steps, batch_size=batch)
    secs = time.perf_counter() - t
    out = []
    for sel in sels:
        by = dict(zip(sel.seeds, sel.scores.tolist()))
        out.append(np.array([by[s] for s in seeds]))
    return out, secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--proxies", default="1,2,4")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--m", default="20,50")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default="bench/results/screen_cascade")
    a = ap.parse_args()
    torch.set_num_threads(1)
    import noisefast as nf

    engine = nf.Engine.from_pretrained("builtin:digits")
    full_steps = engine.settings().steps
    prompts = [f"a handwritten digit {d}" for d in (DIGITS * 10)[: a.prompts]]
    seeds = list(range(a.seeds))
    load0 = os.getloadavg()
    full, full_s = scores(engine, prompts, seeds, full_steps, a.batch)
    ms = [int(m) for m in a.m.split(",")]
    rows = []
    for n in (int(x) for x in a.proxies.split(",")):
        proxy, secs = scores(engine, prompts, seeds, n, a.batch)
        rho = [spearman(p, f) for p, f in zip(proxy, full)]
        rec = {}
        for m in ms:
            r = []
            for p, f in zip(proxy, full):
                true_top = set(np.argsort(-f, kind="stable")[: a.top].tolist())
                proxy_top = set(np.argsort(-p, kind="stable")[:m].tolist())
                r.append(len(true_top & proxy_top) / a.top)
            rec[m] = (float(np.mean(r)), float(np.min(r)))
        best_found = []  # does the proxy's top M hold the full schedule's best seed?
        for p, f in zip(proxy, full):
            best_found.append(int(np.argmax(f)) in set(np.argsort(-p, kind="stable")[: ms[0]].tolist()))
        cost = {m: (secs + full_s * m / a.seeds) / full_s for m in ms}
        rows.append({"proxy_steps": n, "spearman_mean": float(np.mean(rho)), "spearman_min": float(np.min(rho)),
                     "recall": {str(m): {"mean": v[0], "min": v[1]} for m, v in rec.items()},
                     f"best_in_top{ms[0]}": float(np.mean(best_found)), "seconds": secs,
                     "cost_vs_full": {str(m): c for m, c in cost.items()}})
        print(json.dumps(rows[-1]), flush=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info() | {"versions": versions()}, "load_average_start": load0, "load_average_end": os.getloadavg(),
              "model": "builtin:digits", "full_steps": full_steps, "prompts": len(prompts), "seeds": a.seeds,
              "top": a.top, "batch_size": a.batch, "full_seconds": full_s, "threads": 1, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    hdr = "| proxy N+N | Spearman ρ mean (min) | " + " | ".join(
        f"recall of true top-{a.top} in proxy top-{m} mean (min) | cost vs full, M={m}" for m in ms) + " |"
    md = [f"Cascade on builtin:digits: {len(prompts)} prompts × {a.seeds} seeds, full = {full_steps}+{full_steps} "
          f"steps; {result['date']}; load average {load0[0]:.1f} → {result['load_average_end'][0]:.1f} on "
          f"{os.cpu_count()} cores; 1 torch thread.", "", hdr,
          "|" + "---|" * (2 + 2 * len(ms))]
    for r in rows:
        cells = [f"{r['proxy_steps']}+{r['proxy_steps']}", f"{r['spearman_mean']:.3f} ({r['spearman_min']:.3f})"]
        for m in ms:
            cells += [f"{r['recall'][str(m)]['mean']:.2f} ({r['recall'][str(m)]['min']:.2f})",
                      f"{r['cost_vs_full'][str(m)]:.2f}×"]
        md.append("| " + " | ".join(cells) + " |")
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
