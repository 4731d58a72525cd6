"""ONNX Runtime's CPU thread pool under contention: intra-op threads × spin-waiting, idle and beside busy processes.

    python bench/bench_ort_threads [--contention 0 1 2] [--rounds 12] [--json out.json] [--md out.md]

Per-call ms of one UNet call (builtin:digits at 128 rows = a guided call of 64 seeds; the tiny SDXL-architecture
UNet at 16 rows, 8×8 latents), eager torch on 1 thread beside ONNX Runtime sessions with 1 or every core's intra-op
threads and ``session.intra_op.allow_spinning`` 1 (ONNX Runtime's default) or 0 — the setting noisefast uses
(`noisefast.denoisers.ort.session_threads`). ``--contention N`` runs N ``while True: pass`` processes beside it.
Every way is timed round-robin; the median and the upper quartile (how badly a call can stall) are reported.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from noisefast.bench.machine import load_average, machine_info, now_iso, versions
from noisefast.bench.schema import write
from noisefast.bench.stats import summarize
from noisefast.bench.tables import md_table
from noisefast.bench.timing import time_round_robin


def _models():
    import noisefast as nf
    from noisefast.testing import tiny_condition, tiny_unet

    e = nf.Engine.from_pretrained("builtin:digits", backend="torch")
    cond = e.condition("a handwritten digit seven", None, e.settings())
    digits = (e.model.unet, torch.randn(128, 1, 8, 8), torch.full((128,), 500),
              nf.Condition.concat([cond.negative().expand(64), cond.positive().expand(64)]))
    sdxl = (tiny_unet().eval(), torch.randn(16, 4, 8, 8), torch.full((16,), 500), tiny_condition(16).positive())
    return {"builtin:digits, 128 rows": digits, "tiny SDXL UNet, 16 rows": sdxl}


def _ways(unet, folder: Path) -> dict:
    import onnxruntime as ort

    from noisefast.denoisers.cache import available_cores
    from noisefast.denoisers.onnx_cache import cached_export, ort_export_options
    from noisefast.denoisers.ort import OnnxRuntimeDenoiser
    from noisefast.denoisers.unet import UNetDenoiser

    path, _ = cached_export(unet, folder, ort_export_options(unet))
    ways = {"torch, 1 thread": UNetDenoiser(unet)}
    for threads in sorted({1, available_cores()}):
        for spin in ("1", "0"):
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
            so.add_session_config_entry("session.intra_op.allow_spinning", spin)
            ways[f"onnxruntime, {threads} thread(s), spinning {'on' if spin == '1' else 'off'}"] = \
                OnnxRuntimeDenoiser(path, session_options=so)
    return ways


def run(contention, rounds: int) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="noisefast-bench-cache-") as cache:
        for model, (unet, x, t, cond) in _models().items():
            cond = cond._map(lambda v: v.contiguous())
            ways = _ways(unet, Path(cache))
            for n in contention:
                procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
                try:
                    time.sleep(1.0 if n else 0.0)
                    load = os.getloadavg()[0]
                    with torch.inference_mode():
                        sec = time_round_robin({k: (lambda d=d: d(x, t, cond)) for k, d in ways.items()}, rounds, warmup=2)
                finally:
                    for p in procs:
                        p.kill()
                        p.wait()
                rows += [{"model": model, "competing": n, "load_average_1m": load, "way": k, "ms": summarize([1e3 * x for x in v])}
                         for k, v in sec.items()]
    return rows


def markdown(res: dict) -> str:
    m = res["machine"]
    table = md_table(["model", "competing processes", "load", "runtime", "ms/call median", "upper quartile"],
                     [[r["model"], r["competing"], f"{r['load_average_1m']:.2f}", r["way"], f"{r['ms']['median']:.1f}",
                       f"{r['ms']['q3']:.1f}"] for r in res["rows"]], "lrrlrr")  # fmt: skip
    return (f"# ONNX Runtime threads and spinning under contention\n\n{m['date']} · `{res['command']}` · {m['cpu']}, "
            f"{m['cores']} cores · load average at start {m['load_average'][0]}\n\n{table}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contention", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    a = p.parse_args(argv)
    res = {"benchmark": "noisefast.bench_ort_threads", "command": "python " + shlex.join(sys.argv),
           "machine": machine_info() | {"date": now_iso(), "load_average": load_average(), "versions": versions()},
           "rows": run(a.contention, a.rounds)}
    text = markdown(res)
    write(res, a.json, a.md, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
