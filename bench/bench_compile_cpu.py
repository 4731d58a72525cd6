"""Why ``torch.compile`` loses on the CPU, measured: compilations, warm-up per process, ms per call.

    python bench/bench_compile_cpu [--seeds 200] [--json out.json] [--md out.md]

builtin:digits, 1 torch thread (the CLI's default), a 200-seed select's rows (64 per batch, guidance 2: UNet calls
of 128, 64, 16 and 8 rows). Each run is a fresh process, in this order, sharing one inductor cache folder:

  static, cold / warm   the old compile backend: ``dynamic=False``, short batches padded to power-of-two buckets
  dynamic, cold / warm  the current one (`noisefast.denoisers.compiled`): dynamic batch, inference tensors only,
                        no restarted trace
For each: the select's wall time (compilation included), graphs compiled, inductor FX-graph cache hits/misses;
then ms per UNet call at 128 rows: compiled vs eager vs ONNX Runtime (1 thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from noisefast.bench.machine import load_average, machine_info, now_iso, versions
from noisefast.bench.schema import write
from noisefast.bench.stats import summarize
from noisefast.bench.tables import md_table
from noisefast.bench.timing import time_round_robin


def _child(mode: str, seeds: int) -> dict:
    import torch
    from torch._dynamo.utils import counters

    import noisefast as nf
    from noisefast.batching import RowScorer, ScoreJob, bucket_sizes, score_stream
    from noisefast.denoisers.compiled import CompiledDenoiser, compiled_graphs
    from noisefast.denoisers.unet import UNetDenoiser

    torch.set_num_threads(1)
    engine = nf.Engine.from_pretrained("builtin:digits", backend="torch")
    s = engine.settings()
    cond = engine.condition("a handwritten digit seven", None, s)
    unet = engine.model.unet
    if mode == "static":
        den = UNetDenoiser(torch.compile(unet, dynamic=False))
    else:
        den = CompiledDenoiser(unet)
    rows = engine.batch_size_for(s)
    scorer = RowScorer(den, engine.schedule(s), shape=engine.latent_shape(s), guidance_scale=s.guidance_scale,
                       inversion_guidance_scale=s.inversion_guidance_scale, dtype=engine.dtype, device=engine.device,
                       buckets=bucket_sizes(rows) if mode == "static" else None)  # fmt: skip
    t0 = time.perf_counter()
    list(score_stream(scorer, [ScoreJob(0, cond, list(range(seeds)))], rows))
    select_s = time.perf_counter() - t0
    out = {"mode": mode, "select_s": select_s, "graphs": compiled_graphs(),
           "fxgraph_cache_hit": counters["inductor"]["fxgraph_cache_hit"],
           "fxgraph_cache_miss": counters["inductor"]["fxgraph_cache_miss"]}
    if mode == "dynamic":  # steady state, 128 rows (a guided call of 64 seeds)
        from noisefast.config import EngineConfig

        ort = nf.Engine(engine.model, EngineConfig(model="builtin:digits", backend="onnxruntime", threads=1)).den
        x, t = torch.randn(128, 1, 8, 8), torch.full((128,), 500)
        c = nf.Condition.concat([cond.negative().expand(64), cond.positive().expand(64)])
        c = c._map(lambda v: v.contiguous())
        eager = UNetDenoiser(unet)
        with torch.inference_mode():
            s = time_round_robin({"compile": lambda: den(x, t, c), "eager": lambda: eager(x, t, c),
                                   "onnxruntime": lambda: ort(x, t, c)}, 15, warmup=2)
        out["ms_per_call_128_rows"] = {k: summarize([1e3 * x for x in v]) for k, v in s.items()}
    out["load_average_1m"] = os.getloadavg()[0]
    return out


def run(seeds: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="noisefast-inductor-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS="1")
        for mode, state in (("static", "cold"), ("static", "warm"), ("dynamic", "cold"), ("dynamic", "warm")):
            if mode == "dynamic" and state == "cold":  # a cache without the static graphs
                env["TORCHINDUCTOR_CACHE_DIR"] = cache + "-dynamic"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--child", mode, "--seeds", str(seeds)],
                                  env=env, capture_output=True, text=True)  # fmt: skip
            wall = time.perf_counter() - t0
            if proc.returncode:
                rows.append({"mode": mode, "cache": state, "error": proc.stderr[-2000:]})
                continue
            rows.append({"cache": state, "process_wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return rows


def markdown(res: dict) -> str:
    m = res["machine"]
    table = md_table(["backend", "inductor cache", "select wall s (200 seeds, compilation incl.)", "graphs",
                      "FX cache hit / miss", "process wall s", "load"],
                     [[r["mode"], r["cache"], f"{r.get('select_s', float('nan')):.1f}", r.get("graphs", "–"),
                       f"{r.get('fxgraph_cache_hit', '–')} / {r.get('fxgraph_cache_miss', '–')}",
                       f"{r.get('process_wall_s', float('nan')):.1f}", f"{r.get('load_average_1m', float('nan')):.2f}"]
                      for r in res["runs"]], "llrrrrr")  # fmt: skip
    steady = next((r["ms_per_call_128_rows"] for r in res["runs"] if "ms_per_call_128_rows" in r), {})
    per_call = md_table(["runtime", "ms per call, 128 rows (median)", "min"],
                        [[k, f"{v['median']:.1f}", f"{v['min']:.1f}"] for k, v in steady.items()], "lrr")
    return (f"# torch.compile on the CPU (builtin:digits, 1 thread)\n\n{m['date']} · `{res['command']}` · {m['cpu']} · "
            f"load average {m['load_average'][0]}\n\n{table}\n\n{per_call}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument("--child", choices=("static", "dynamic"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, a.seeds)))
        return 0
    res = {"benchmark": "noisefast.bench_compile_cpu", "command": "python " + shlex.join(sys.argv),
           "machine": machine_info() | {"date": now_iso(), "load_average": load_average(), "versions": versions()},
           "runs": run(a.seeds)}
    text = markdown(res)
    write(res, a.json, a.md, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
