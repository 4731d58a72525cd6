"""Forward backends side by side: ms per UNet call (and per stability score on CPU), TFLOP/s on GPU.

    python -m bench.bench_backends [--json out.json] [--threads 1] [--skip-gpu] [--no-trt] [--budget-s 420]

CPU (always): the tiny SDXL-architecture UNet (`noisefast.testing.tiny_unet`), eager torch vs
``torch.compile`` (inductor) vs ONNX Runtime (fp32): ms per UNet call at the CFG batch (2K rows), and
ms per stability score (Definition 1) of K candidates with N denoising + N inversion steps, CFG 5.5.
Backends are timed round-robin (`bench.common.time_round_robin`), so load on a shared machine hits all
alike; setup (export, compilation, first calls) is reported separately.

GPU (when CUDA is available): the full-size SDXL UNet with random weights (``bench/configs/sdxl_unet.json``),
fp16, at 512² and 1024²: eager and ``compile`` through `bench.compare_unet.unet_calls`, TensorRT (fp16
engine, CUDA graph, one profile at the measured batch) through the same per-configuration measurement,
or recorded as skipped with the reason (package missing, build failure, budget). Achieved TFLOP/s are
counted FLOPs per call over the median call time, against an fp16 8192³ matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import command_line, machine_info, md_table, summarize, time_round_robin, write_json


def cpu_part(args) -> dict:
    from noisefast.denoisers.backends import make_denoiser
    from noisefast.schedule import DDIMSchedule
    from noisefast.stability import stability_score
    from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition, tiny_unet

    unet = tiny_unet()
    k, size = args.candidates, unet.config.sample_size
    cond = tiny_condition(1)  # prompt + negative prompt, batch 1 (broadcast)
    call_cond = tiny_condition(2 * k).positive()
    x = torch.randn(2 * k, 4, size, size)  # [2K, 4, H, W]: one guided call, unconditional + conditional halves
    t = torch.full((2 * k,), 500)  # [2K]
    sched = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, args.steps)
    noise = torch.randn(k, 4, size, size, generator=torch.Generator().manual_seed(0))  # [K, 4, H, W]
    with tempfile.TemporaryDirectory() as tmp:
        makers = {
            "torch (eager)": lambda: make_denoiser(unet, "torch"),
            "compile (inductor)": lambda: make_denoiser(unet, "compile"),
            "onnxruntime (fp32)": lambda: make_denoiser(unet, "onnxruntime", export_dir=Path(tmp) / "onnx"),
        }
        dens, setup = {}, {}
        for name, make in makers.items():  # construction + first calls (export, compilation) = setup
            t0 = time.perf_counter()
            dens[name] = den = make()
            with torch.no_grad():
                den(x, t, call_cond)
                stability_score(den, sched, noise, cond, guidance_scale=5.5)
            setup[name] = time.perf_counter() - t0
        with torch.no_grad():
            call = time_round_robin({n: (lambda d=d: d(x, t, call_cond)) for n, d in dens.items()}, args.iters)
            score = time_round_robin(
                {n: (lambda d=d: stability_score(d, sched, noise, cond, guidance_scale=5.5)) for n, d in dens.items()},
                max(3, args.iters // 4),
            )
    rows = [dict(backend=n, batch=2 * k, latent=size, ms_per_call=summarize(call[n]), ms_per_score=summarize(score[n]),
                 setup_s=setup[n]) for n in dens]
    return {"model": "tiny random SDXL-architecture UNet, float32", "threads": torch.get_num_threads(),
            "score": f"K={k} candidates, {args.steps}+{args.steps} DDIM steps, CFG 5.5", "rows": rows}


def gpu_part(args) -> dict:
    from bench.compare_unet import (
        DOCUMENTED_TFLOP_PER_CALL,
        _one_config,
        _Skip,
        build_unet,
        count_flops,
        matmul_peak,
        sdxl_unet_config,
        unet_calls,
    )
    from noisefast.denoisers.backends import BackendUnavailableError, make_denoiser

    t_start = time.perf_counter()
    peak = matmul_peak("cuda", torch.float16, 8192, 20)
    unet = build_unet(sdxl_unet_config(), "cuda", torch.float16)
    resolutions, b = (512, 1024), args.gpu_batch
    rows, skipped = unet_calls(unet, resolutions, (b,), iters=args.iters, peak_tflops=peak["tflops"],
                               budget_s=args.budget_s / 2, compile_at=[(px, b) for px in resolutions],
                               documented=DOCUMENTED_TFLOP_PER_CALL)
    deadline = t_start + args.budget_s
    for px in resolutions:
        where = dict(backend="tensorrt (fp16, CUDA graph)", resolution=px, latent=px // 8, batch=b)
        if args.no_trt:
            skipped.append({**where, "reason": "--no-trt"})
            continue
        try:
            eager = make_denoiser(unet, "torch")
            flops = tuple(count_flops(eager, unet, n, px) for n in (1, 2))

            def make(px=px):
                return make_denoiser(unet, "tensorrt", export_dir=Path(args.work_dir) / f"sdxl_unet_{px}",
                                     export_options={"latent_size": px // 8, "device": "cuda"},
                                     profiles=[(b, b, b)], cuda_graph=True)

            rows.append(_one_config(make, unet, px, b, args.iters, deadline, *flops, peak["tflops"],
                                    DOCUMENTED_TFLOP_PER_CALL.get(px), where))
        except (BackendUnavailableError, _Skip, RuntimeError) as e:  # recorded, not hidden
            skipped.append({**where, "reason": f"{type(e).__name__}: {e}"})
        finally:
            torch.cuda.empty_cache()
    return {"model": "SDXL UNet (random weights), float16", "matmul_peak": peak, "rows": rows, "skipped": skipped}


def markdown(result: dict) -> str:
    out = []
    if "cpu" in result:
        c = result["cpu"]
        out.append(f"CPU, {c['model']}, {c['threads']} thread(s); score = {c['score']}\n")
        out.append(md_table(
            ["backend", "batch", "ms / UNet call", "ms / score", "setup s"],
            [[r["backend"], r["batch"], f"{r['ms_per_call']['median']:.2f}", f"{r['ms_per_score']['median']:.1f}",
              f"{r['setup_s']:.1f}"] for r in c["rows"]], "lrrrr"))
    if "gpu" in result:
        g = result["gpu"]
        out.append(f"\nGPU, {g['model']}; fp16 8192³ matmul: {g['matmul_peak']['tflops']:.0f} TFLOP/s\n")
        out.append(md_table(
            ["backend", "resolution", "batch", "ms / UNet call", "TFLOP/s", "% of matmul peak", "setup s"],
            [[r["backend"], r["resolution"], r["batch"], f"{r['ms_per_call']['median']:.2f}", f"{r['tflops']:.1f}",
              f"{r['pct_of_matmul_peak']:.0f}", f"{r['setup_s']:.0f}"] for r in g["rows"]], "lrrrrrr"))
        out += [f"- not measured: {s['backend']} {s['resolution']}² batch {s['batch']}: {s['reason']}"
                for s in g["skipped"]]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=None, help="also write the full result (with spreads) here")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (torch and ORT)")
    p.add_argument("--iters", type=int, default=30, help="timed rounds per UNet call (scores: a quarter)")
    p.add_argument("--candidates", type=int, default=4, help="K noises per CPU score (UNet batch 2K)")
    p.add_argument("--steps", type=int, default=4, help="DDIM steps N = N' in the CPU score")
    p.add_argument("--gpu-batch", type=int, default=2, help="UNet batch on GPU (2 = one image with CFG)")
    p.add_argument("--skip-cpu", action="store_true")
    p.add_argument("--skip-gpu", action="store_true")
    p.add_argument("--no-trt", action="store_true", help="skip TensorRT (an SDXL engine build takes minutes)")
    p.add_argument("--budget-s", type=float, default=420.0, help="GPU part time budget (half for eager/compile)")
    p.add_argument("--work-dir", default=tempfile.gettempdir(), help="where the GPU ONNX exports go")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"command": command_line(), "machine": machine_info()}
    if not args.skip_cpu:
        result["cpu"] = cpu_part(args)
    if not args.skip_gpu and torch.cuda.is_available():
        result["gpu"] = gpu_part(args)
    print(markdown(result))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
