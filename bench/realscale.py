"""Opt-in real-scale CPU part: the full-size SDXL UNet (random weights, 2.57 B parameters) on every CPU backend.

    python -m bench.realscale [--json out.json] [--stages eager,onnxruntime,compile] [--compile-budget-s 1800]

The UNet is built from ``bench/configs/sdxl_unet.json`` (the same file as
``/work/shared/models/sdxl-base-1.0/unet/config.json``), float32, on the CPU; the case is SDXL-Turbo scoring:
512² (latent 4×64×64), 1 DDIM step + 1 inversion step (trailing), batch 2, no CFG. Each backend runs in its own
process (`_stage`), so every peak RSS is that backend's alone and 24 GB is never shared between two copies of the
weights:

  eager        ms per UNet call (1 warm-up, ``--calls`` timed), one stability score of the batch; its UNet outputs
               on a fixed input are saved for the others' parity
  onnxruntime  the export (TorchScript exporter, weights as external data: ~10 GB), then ONNX Runtime on every
               core (not spinning): session load, ms per call, the same stability score, max |Δ| vs eager's outputs
  compile      ``torch.compile`` (inductor, dynamic batch): compilation time (within ``--compile-budget-s``), ms
               per call, the same score
Peak RSS per stage (``ru_maxrss`` of the child) says whether it fit the machine's memory. Minutes per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import command_line, machine_info, summarize, write_json

PIXELS, BATCH, STEPS = 512, 2, 1


def _case():
    from bench.compare_unet import build_unet, random_condition, sdxl_unet_config
    from noisefast.schedule import DDIMSchedule
    from noisefast.testing import SDXL_SCHEDULER_CONFIG

    t0 = time.perf_counter()
    unet = build_unet(sdxl_unet_config(), "cpu", torch.float32)
    build_s = time.perf_counter() - t0
    cond = random_condition(unet.config, 1, PIXELS, "cpu", torch.float32)
    sched = DDIMSchedule.from_config({**SDXL_SCHEDULER_CONFIG, "timestep_spacing": "trailing"}, STEPS, STEPS)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(BATCH, 4, PIXELS // 8, PIXELS // 8, generator=g)  # [2, 4, 64, 64]
    x = torch.randn(BATCH, 4, PIXELS // 8, PIXELS // 8, generator=g)
    t = torch.full((BATCH,), 999)
    return unet, cond, sched, noise, (x, t, cond.expand(BATCH).positive()), build_s


def _calls(den, call, n: int) -> dict:
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = den(*call)  # warm-up (ORT arena, compile's graph)
        first = time.perf_counter() - t0
        ms = []
        for _ in range(n):
            t0 = time.perf_counter()
            den(*call)
            ms.append((time.perf_counter() - t0) * 1e3)
    return {"first_call_s": first, "ms_per_call": summarize(ms)}, out


def _score(den, sched, noise, cond) -> tuple[list[float], float]:
    from noisefast.stability import stability_score

    t0 = time.perf_counter()
    with torch.inference_mode():
        s = stability_score(den, sched, noise, cond, 0.0, 1.0)
    return s.tolist(), time.perf_counter() - t0


def _stage(name: str, work: Path, calls: int, compile_budget_s: float) -> dict:
    """One backend, in this (fresh) process; writes ``work/<name>.json``."""
    from noisefast.denoisers.backends import make_denoiser

    unet, cond, sched, noise, call, build_s = _case()
    res = {"stage": name, "build_unet_s": build_s, "parameters": sum(p.numel() for p in unet.parameters())}
    t0 = time.perf_counter()
    if name == "eager":
        den = make_denoiser(unet, "torch")
    elif name == "onnxruntime":
        den = make_denoiser(unet, "onnxruntime", cache_dir=work / "cache")
        meta = json.loads((den.path.parent / "noisefast_onnx.json").read_text())
        res["export"] = {"external_data": meta["external_data"], "weight_bytes": meta["weight_bytes"],
                         "files": {f: s for f, (s, _) in meta["files"].items()}, "threads": den.threads}
    else:
        den = make_denoiser(unet, "compile", cache_dir=work / "cache")
    res["setup_s"] = time.perf_counter() - t0  # export + session load; compile happens at the first call
    res["rss_after_setup_gib"] = _peak_rss_gib()
    timing, out = _calls(den, call, calls if name != "compile" or res["setup_s"] < compile_budget_s else 1)
    res.update(timing)
    res["scores"], res["score_s"] = _score(den, sched, noise, cond)
    if name == "eager":
        torch.save(out, work / "eager_out.pt")
    elif (work / "eager_out.pt").is_file():
        ref = torch.load(work / "eager_out.pt")
        res["max_abs_diff_vs_eager"] = float((out - ref).abs().max())
        res["max_rel_diff_vs_eager"] = float((out - ref).abs().max() / ref.abs().max())
    res["peak_rss_gib"] = _peak_rss_gib()
    (work / f"{name}.json").write_text(json.dumps(res))
    return res


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def run(stages=("eager", "onnxruntime", "compile"), calls: int = 3, compile_budget_s: float = 1800.0) -> dict:
    out = {"case": f"SDXL UNet (random weights) fp32, {PIXELS}², batch {BATCH}, {STEPS}+{STEPS} trailing, no CFG",
           "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, "stages": {}}
    with tempfile.TemporaryDirectory(prefix="noisefast-realscale-") as work:
        for name in stages:
            t0 = time.perf_counter()
            loads = [os.getloadavg()[0]]
            proc = subprocess.run([sys.executable, "-m", "bench.realscale", "--stage", name, "--work", work,
                                   "--calls", str(calls), "--compile-budget-s", str(compile_budget_s)],
                                  capture_output=True, text=True)  # fmt: skip
            loads.append(os.getloadavg()[0])
            path = Path(work) / f"{name}.json"
            if proc.returncode == 0 and path.is_file():
                out["stages"][name] = json.loads(path.read_text())
            else:
                out["stages"][name] = {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-3000:]}
            out["stages"][name].update(wall_s=time.perf_counter() - t0, load_average_1m=loads)
    eager = out["stages"].get("eager", {})
    for name, r in out["stages"].items():
        if "ms_per_call" in r and "ms_per_call" in eager:
            r["speedup_vs_eager"] = eager["ms_per_call"]["median"] / r["ms_per_call"]["median"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--stages", default="eager,onnxruntime,compile")
    p.add_argument("--calls", type=int, default=3, help="timed UNet calls per backend after one warm-up")
    p.add_argument("--compile-budget-s", type=float, default=1800.0)
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.stage:
        _stage(a.stage, Path(a.work), a.calls, a.compile_budget_s)
        return 0
    res = {"benchmark": "noisefast.realscale", "command": command_line(), "machine": machine_info(),
           **run(tuple(s for s in a.stages.split(",") if s), a.calls, a.compile_budget_s)}
    if a.json:
        write_json(a.json, res)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "stderr"} for k, v in res["stages"].items()},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
