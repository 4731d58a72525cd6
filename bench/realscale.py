"""Opt-in real-scale CPU part: the full-size SDXL UNet (random weights, 2.57 B parameters) on every CPU backend.

    python bench/realscale [--json out.json] [--stages eager,export,onnxruntime,compile] [--calls 3]

The UNet is built from ``bench/configs/sdxl_unet.json`` (the same file as
``/work/shared/models/sdxl-base-1.0/unet/config.json``), float32, on the CPU; the case is SDXL-Turbo scoring:
512² (latent 4×64×64), 1 DDIM step + 1 inversion step (trailing), batch 2, no CFG. Each backend runs in its own
process (`_stage`), so every peak RSS is that backend's alone and 24 GB is never shared between two copies of the
weights:

  eager        ms per UNet call (1 warm-up, ``--calls`` timed), one stability score of the batch; its UNet outputs
               on a fixed input are saved for the others' parity
  export       the ONNX export as the onnxruntime backend makes it (TorchScript exporter, traced at 32² latents,
               dynamic size, weights streamed into one external data file: ~10 GB)
  onnxruntime  a session over that export, on every core (not spinning) — no torch UNet in this process: load
               time, ms per call, the same stability score, max |Δ| vs eager's outputs
  compile      ``torch.compile`` (inductor, dynamic batch): the first call (compilation), ms per call, the score
Peak RSS per stage (``ru_maxrss`` of the child) says whether it fits the machine's memory; the Engine's own
``onnxruntime``/``auto`` path holds the torch UNet (for gradients) beside the session: eager's + onnxruntime's.
Minutes per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

PIXELS, BATCH, STEPS = 512, 2, 1


def _inputs(config):
    """The case's condition, schedule, seed noise [2, 4, 64, 64] and one UNet call (x, t, cond) — no weights needed."""
    from noisefast.bench.models import random_condition
    from noisefast.schedule import DDIMSchedule
    from noisefast.testing import SDXL_SCHEDULER_CONFIG

    cond = random_condition(config, 1, PIXELS, "cpu", torch.float32)
    sched = DDIMSchedule.from_config({**SDXL_SCHEDULER_CONFIG, "timestep_spacing": "trailing"}, STEPS, STEPS)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(BATCH, 4, PIXELS // 8, PIXELS // 8, generator=g)
    x = torch.randn(BATCH, 4, PIXELS // 8, PIXELS // 8, generator=g)
    return cond, sched, noise, (x, torch.full((BATCH,), 999), cond.expand(BATCH).positive())


def _calls(den, call, n: int) -> tuple[dict, torch.Tensor]:
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


def _config(path: str | None) -> dict:
    from noisefast.bench.models import sdxl_unet_config

    return sdxl_unet_config() if path is None else json.loads(Path(path).read_text())


def _stage(name: str, work: Path, calls: int, config_path: str | None = None) -> dict:
    """One stage, in this (fresh) process, so its peak RSS is its own; writes ``work/<name>.json``.

    eager / compile: the torch UNet; export: the ONNX export into ``work/cache`` (and nothing else);
    onnxruntime: a session over that export — the torch UNet is never built in this process."""
    from noisefast.bench.models import build_unet
    from noisefast.denoisers.backends import make_denoiser
    from noisefast.stability import stability_score

    config = _config(config_path)
    cond, sched, noise, call = _inputs(config)
    res = {"stage": name}
    t0 = time.perf_counter()
    if name == "onnxruntime":
        from noisefast.denoisers.ort import OnnxRuntimeDenoiser

        den = OnnxRuntimeDenoiser(json.loads((work / "export.json").read_text())["path"])
        res["threads"] = den.threads
    else:
        unet = build_unet(config, "cpu", torch.float32)
        res.update(build_unet_s=time.perf_counter() - t0, parameters=sum(p.numel() for p in unet.parameters()))
        t0 = time.perf_counter()
        if name == "export":
            from noisefast.denoisers.onnx_cache import cached_export, ort_export_options

            path, _ = cached_export(unet, work / "cache", ort_export_options(unet))
            meta = json.loads((path.parent / "noisefast_onnx.json").read_text())
            res.update(path=str(path), export_s=time.perf_counter() - t0, external_data=meta["external_data"],
                       weight_bytes=meta["weight_bytes"], files={f: v[0] for f, v in meta["files"].items()},
                       traced_shapes=meta["example_shapes"], peak_rss_gib=_peak_rss_gib())
            (work / "export.json").write_text(json.dumps(res))
            return res
        den = make_denoiser(unet, "torch" if name == "eager" else "compile", cache_dir=work / "cache")
    res["setup_s"] = time.perf_counter() - t0  # ORT: session load; compile compiles at the first call
    timing, out = _calls(den, call, calls)
    res.update(timing)
    t0 = time.perf_counter()
    with torch.inference_mode():
        res["scores"] = stability_score(den, sched, noise, cond, 0.0, 1.0).tolist()
    res["score_s"] = time.perf_counter() - t0
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


def run(stages=("eager", "export", "onnxruntime", "compile"), calls: int = 3, config_path: str | None = None) -> dict:
    """``config_path``: another UNet config (default: the full-size SDXL UNet; a tiny one makes a smoke test)."""
    what = "SDXL UNet" if config_path is None else f"UNet {config_path}"
    out = {"case": f"{what} (random weights) fp32, {PIXELS}², batch {BATCH}, {STEPS}+{STEPS} trailing, no CFG",
           "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, "stages": {}}
    with tempfile.TemporaryDirectory(prefix="noisefast-realscale-") as work:
        for name in stages:
            t0 = time.perf_counter()
            loads = [os.getloadavg()[0]]
            cmd = [sys.executable, __file__, "--stage", name, "--work", work, "--calls", str(calls)]
            proc = subprocess.run(cmd + (["--unet-config", config_path] if config_path else []), capture_output=True,
                                  text=True)  # fmt: skip
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
    p.add_argument("--stages", default="eager,export,onnxruntime,compile")
    p.add_argument("--calls", type=int, default=3, help="timed UNet calls per backend after one warm-up")
    p.add_argument("--unet-config", default=None, help="another UNet config.json (default: the full-size SDXL UNet)")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.stage:
        _stage(a.stage, Path(a.work), a.calls, a.unet_config)
        return 0
    res = {"benchmark": "noisefast.realscale", "command": "python " + shlex.join(sys.argv),
           "machine": machine_info() | {"date": now_iso(), "load_average": load_average(), "versions": versions()},
           **run(tuple(s for s in a.stages.split(",") if s), a.calls, a.unet_config)}
    write(res, a.json, None, "")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "stderr"} for k, v in res["stages"].items()},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
