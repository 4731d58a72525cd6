"""The built-in model end to end: noisefast's ``auto`` backend vs eager torch, idle and beside a competing process.

    python -m bench.compare_digits [--seeds 200] [--repeats 3] [--contention 0 1] [--json out.json]

What the quick start runs (``noisefast select`` on builtin:digits: 10+10 DDIM steps, guidance 2, 64 rows per
batch), through `Engine.select`, each backend at its own best thread setting as the CLI runs it:

  torch         eager torch on 1 thread (the CLI's default for pixel models: torch's spin-waiting threads lose on
                its tiny layers — 2 threads measured slower here too, see ``torch_2_threads``)
  auto          the default: decides per batch shape (ONNX Runtime on every core, not spinning, vs eager), the
                decision and the export cached; its first run in a fresh cache (export + timing) is reported apart
  onnxruntime   ONNX Runtime on 1 thread: the same core count as eager (context)

Each condition (``--contention N``: N CPU-bound ``while True: pass`` processes running beside it) times every way
round-robin, whole selects, ``--repeats`` times; the machine's load average is recorded with each. Then noise
optimization (Algorithm 2, one seed, 10+10 steps) s/iteration: all-torch vs ONNX Runtime forward + torch backward.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from bench.common import command_line, machine_info, summarize, time_round_robin, write_json

PROMPT = "a handwritten digit seven"


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _engine(model, **config):
    from noisefast.config import EngineConfig
    from noisefast.pipeline import Engine

    return Engine(model, EngineConfig(model="builtin:digits", **config))


def _engines(cache: str, torch_2_threads: bool) -> dict:
    """name → (Engine, torch threads while it runs); every Engine shares one loaded model."""
    from noisefast.loading import load_model

    model = load_model("builtin:digits")
    ways = {
        "torch": (_engine(model, backend="torch"), 1),
        "torch_2_threads": (_engine(model, backend="torch"), 2),
        "auto": (_engine(model, backend="auto", cache_dir=cache), 1),
        "onnxruntime_1_thread": (_engine(model, backend="onnxruntime", cache_dir=cache, threads=1), 1),
    }
    if not torch_2_threads:
        del ways["torch_2_threads"]
    return ways


def _select(engine, torch_threads: int, seeds: int, steps: dict):
    def run():
        torch.set_num_threads(torch_threads)
        return engine.select(PROMPT, seeds=range(seeds), **steps)

    return run


def scoring(seeds: int, repeats: int, contention, cache: str, steps: dict, torch_2_threads: bool = True) -> dict:
    engines = _engines(cache, torch_2_threads)
    t0 = time.perf_counter()
    first = _select(*engines["auto"], seeds, steps)()  # a fresh cache: exports and decides (its first-run cost)
    first_s = time.perf_counter() - t0
    ref = _select(*engines["torch"], seeds, steps)()
    conditions = []
    for n in contention:
        procs = _busy(n)
        try:
            time.sleep(1.0 if n else 0.0)
            load_before = os.getloadavg()[0]
            ms = time_round_robin({name: _select(e, th, seeds, steps) for name, (e, th) in engines.items()}, repeats,
                                  warmup=1)
            load_after = os.getloadavg()[0]
        finally:
            for p in procs:
                p.kill()
                p.wait()
        s = {name: summarize([t / 1e3 for t in v]) for name, v in ms.items()}
        conditions.append({"competing_processes": n, "load_average_1m": [load_before, load_after], "seconds": s,
                           "seeds_per_s": {k: seeds / v["median"] for k, v in s.items()},
                           "auto_vs_torch": s["torch"]["median"] / s["auto"]["median"],
                           "onnxruntime_1_thread_vs_torch": s["torch"]["median"] / s["onnxruntime_1_thread"]["median"]})
    auto = engines["auto"][0]
    return {"seeds": seeds, "repeats": repeats, "auto_first_run_s": first_s, "auto_backend": auto.backend_info(),
            "best_seed": {"auto": first.best_seed, "torch": ref.best_seed},
            "max_abs_score_diff_auto_vs_torch": float((first.scores - ref.scores).abs().max()),
            "conditions": conditions}


def optimization(iterations: int, cache: str, steps: dict) -> dict:
    """s/iteration of Algorithm 2 on one seed: all-torch vs ONNX Runtime forward + torch backward (1 thread each)."""
    from noisefast.loading import load_model

    model = load_model("builtin:digits")
    ways = {"torch": _engine(model, backend="torch"),
            "onnxruntime_forward": _engine(model, backend="onnxruntime", cache_dir=cache, threads=1),
            "auto": _engine(model, backend="auto", cache_dir=cache)}
    torch.set_num_threads(1)
    out = {}
    for name, e in ways.items():
        e.optimize(PROMPT, seeds=[79], iterations=1, **steps)  # warm-up (ORT arena, auto's decision)
    ms = time_round_robin({n: (lambda e=e: e.optimize(PROMPT, seeds=[79], iterations=iterations, **steps))
                           for n, e in ways.items()}, 3, warmup=0)
    for name, v in ms.items():
        out[name] = summarize([t / 1e3 / iterations for t in v])
    out["ratio_torch_over_onnxruntime_forward"] = out["torch"]["median"] / out["onnxruntime_forward"]["median"]
    return {"iterations": iterations, "steps": steps or "the model's (10+10), guidance 2, 1 seed",
            "s_per_iteration": out}


def run(seeds=200, repeats=3, contention=(0, 1), iterations=5, steps: int | None = None,
        torch_2_threads: bool = True) -> dict:
    """``steps``: N for N+N DDIM steps (default: the model's 10+10); ``torch_2_threads``: also time eager torch on 2
    threads (slow on a busy machine: its threads spin-wait)."""
    steps_kw = {} if steps is None else {"steps": steps, "inversion_steps": steps}
    with tempfile.TemporaryDirectory(prefix="noisefast-bench-cache-") as cache:
        res = {"scoring": scoring(seeds, repeats, contention, cache, steps_kw, torch_2_threads)}
        res["optimize"] = optimization(iterations, cache, steps_kw)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--contention", type=int, nargs="+", default=[0, 1], help="competing CPU-bound processes per run")
    p.add_argument("--iterations", type=int, default=5, help="optimization iterations per timed run")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    res = {"benchmark": "noisefast.compare_digits", "command": command_line(), "machine": machine_info(),
           **run(a.seeds, a.repeats, a.contention, a.iterations)}
    if a.json:
        write_json(a.json, res)
    for c in res["scoring"]["conditions"]:
        print(f"{c['competing_processes']} competing: load {c['load_average_1m']}, seeds/s "
              + ", ".join(f"{k} {v:.1f}" for k, v in c["seeds_per_s"].items()) + f"; auto {c['auto_vs_torch']:.2f}× torch")
    print(f"auto first run (fresh cache) {res['scoring']['auto_first_run_s']:.1f} s; optimize s/iteration "
          + ", ".join(f"{k} {v['median']:.3f}" for k, v in res["optimize"]["s_per_iteration"].items() if isinstance(v, dict)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
