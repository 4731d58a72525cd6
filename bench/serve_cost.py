"""Seconds per cost unit of `noisefast serve`'s requests (decides the default ``--max-cost``).

The server counts a request's cost as rows × UNet calls × latent pixels (`noisefast.serve.cost`). This times the
Engine calls those requests make on builtin:digits (1 thread) and prints, per request shape, its cost, its seconds
and the microseconds per unit — so the default limit can be read as seconds on this machine.

    python bench/serve_cost.py                      # → bench/results/serve_cost-DATE.md
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from pathlib import Path

import torch

P = "a handwritten digit three"


def best_of(fn, n: int) -> float:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def main() -> None:
    from noisefast.defaults import DEFAULT_MAX_COST
    from noisefast.pipeline import Engine
    from noisefast.serve.cost import generate_cost, optimize_cost, score_cost
    from noisefast.workflows import optimize_seeds

    torch.set_num_threads(1)
    e = Engine.from_pretrained("builtin:digits")
    big = 10**12
    d, d32 = e.settings(), e.settings(height=32, width=32)
    e.score(P, [0], settings=d)  # warm
    shapes = [  # (label, cost, fn, repeats)
        *[(f"score {k} seeds, defaults (8×8, 10+10 steps, CFG 2)", score_cost(big, k, d, e.latent_shape(d)),
           lambda k=k: e.score(P, list(range(k)), settings=d), 3) for k in (1, 8, 64, 100)],  # fmt: skip
        ("score 64 seeds at 32×32", score_cost(big, 64, d32, e.latent_shape(d32)),
         lambda: e.score(P, list(range(64)), settings=d32), 1),  # fmt: skip
        ("optimize 1 seed, 10 iterations, defaults", optimize_cost(big, 10, d, e.latent_shape(d)),
         lambda: optimize_seeds(e, P, [1], settings=d, images=False, iterations=10), 1),  # fmt: skip
        ("generate 1 image, defaults", generate_cost(big, d, e.latent_shape(d)),
         lambda: e.generate(P, [1], settings=d), 3),  # fmt: skip
    ]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    load = os.getloadavg()
    rows = []
    for label, cost, fn, n in shapes:
        secs = best_of(fn, n)
        rows.append(f"| {label} | {cost:,} | {secs:.2f} | {secs / cost * 1e6:.1f} |")
        print(rows[-1], flush=True)
    after = os.getloadavg()
    date = dt.date.today().isoformat()
    md = [f"# noisefast serve: seconds per cost unit, builtin:digits, 1 thread ({date})", "",
          f"`python bench/serve_cost.py`; {cpu}, {os.cpu_count()} CPUs; "
          f"load average before {load[0]:.2f}, after {after[0]:.2f}; best of the repeats shown in the script.", "",
          f"Default --max-cost: {DEFAULT_MAX_COST:,}.", "",
          "| request | cost (rows × UNet calls × latent px) | seconds | µs per unit |", "|---|---:|---:|---:|", *rows]  # fmt: skip
    out = Path(__file__).parent / "results" / f"serve_cost-{date}.md"
    out.write_text("\n".join(md) + "\n")
    print(out)


if __name__ == "__main__":
    main()
