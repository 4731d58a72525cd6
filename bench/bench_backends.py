"""Forward backends side by side: ms per UNet call (and per stability score on CPU), TFLOP/s on GPU.

CPU (always): the tiny SDXL-architecture UNet (`noisefast.testing.tiny_unet`), eager torch vs
``torch.compile`` (inductor) vs ONNX Runtime (fp32), per UNet call at the CFG batch and for a whole
stability score (Definition 1) of K candidates, N denoising + N inversion steps.

GPU (when CUDA is available): the full-size SDXL UNet built from ``bench/configs/sdxl_unet.json``
(the real config, random weights: same FLOPs and bytes), fp16, at 512² and 1024² (latents 64² and
128²): eager, ``compile`` (reduce-overhead) and TensorRT where the ``tensorrt`` package is installed
(recorded plainly where it is not, or where the build fails). Timing: CUDA events, warm-up, median.
FLOPs per call are counted by ``torch.utils.flop_counter`` on the eager forward; the peak is a
measured fp16 8192³ matmul in the same run.

    python bench/bench_backends.py [--json out.json] [--threads 2] [--skip-gpu] [--no-trt]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).parent / "configs" / "sdxl_unet.json"


def median_ms(fn, *, warmup: int, iters: int, cuda: bool) -> float:
    """Median wall time of ``fn()`` in ms (CUDA events on the current stream when ``cuda``)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved_ms(fns: dict, rounds: int) -> dict:
    """Median wall ms of each ``fns[name]()``, timed round-robin so load drift on a shared CPU hits all alike."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def sdxl_condition(batch: int, device, dtype, seq_len: int = 77):
    from noisefast.denoisers.base import Condition

    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]]).to(device=device, dtype=dtype)
    return Condition(r(batch, seq_len, 2048), r(batch, 1280), time_ids.expand(batch, 6))


def bench_cpu(args) -> list[dict]:
    from noisefast.denoisers.backends import make_denoiser
    from noisefast.schedule import DDIMSchedule
    from noisefast.stability import stability_score
    from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition, tiny_unet

    unet = tiny_unet()
    cond = tiny_condition(1)  # prompt + negative prompt, batch 1 (broadcast)
    k, size = args.candidates, unet.config.sample_size
    x = torch.randn(2 * k, 4, size, size)  # one guided call: unconditional + conditional halves
    t = torch.full((2 * k,), 500)
    call_cond = tiny_condition(2 * k).positive()
    sched = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, args.steps)
    noise = torch.randn(k, 4, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        makers = {
            "torch (eager)": lambda: make_denoiser(unet, "torch"),
            "compile (inductor)": lambda: make_denoiser(unet, "compile"),
            "onnxruntime (fp32)": lambda: make_denoiser(unet, "onnxruntime", export_dir=Path(tmp) / "onnx",
                                                        export_options={"seq_len": 7}),
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
            call = interleaved_ms({n: (lambda d=d: d(x, t, call_cond)) for n, d in dens.items()}, args.iters)
            score = interleaved_ms(
                {n: (lambda d=d: stability_score(d, sched, noise, cond, guidance_scale=5.5)) for n, d in dens.items()},
                max(3, args.iters // 4),
            )
    return [
        dict(device="cpu", model="tiny SDXL-arch UNet", backend=name, batch=2 * k, latent=f"{size}x{size}",
             ms_per_call=call[name], ms_per_score=score[name], setup_s=setup[name],
             score=f"K={k}, {args.steps}+{args.steps} steps, CFG 5.5")
        for name in dens
    ]


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    ms = median_ms(lambda: a @ b, warmup=5, iters=20, cuda=True)
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def bench_gpu(args) -> tuple[list[dict], float]:
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from noisefast.denoisers.backends import make_denoiser

    peak = matmul_tflops()
    unet = UNet2DConditionModel.from_config(json.loads(CONFIG.read_text())).to("cuda", torch.float16).eval()
    rows = []
    for pixels in (512, 1024):
        lat = pixels // 8
        b = args.gpu_batch
        x = torch.randn(b, 4, lat, lat, device="cuda", dtype=torch.float16)
        t = torch.full((b,), 500, device="cuda")
        cond = sdxl_condition(b, "cuda", torch.float16)
        eager = make_denoiser(unet, "torch")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            eager(x, t, cond)
        flops = counter.get_total_flops()
        makers = {"torch (eager)": lambda: eager, "compile (reduce-overhead)": lambda: make_denoiser(unet, "compile")}
        if args.no_trt:
            makers["tensorrt (fp16)"] = None
        else:
            makers["tensorrt (fp16)"] = lambda: make_denoiser(
                unet, "tensorrt", export_dir=Path(args.work_dir) / f"onnx{pixels}",
                export_options={"latent_size": lat, "device": "cuda"}, profiles=[(b, b, b)], cuda_graph=True,
            )
        for name, make in makers.items():
            row = dict(device=torch.cuda.get_device_name(), model="SDXL UNet (random weights)", backend=name,
                       batch=b, latent=f"{lat}x{lat}", resolution=f"{pixels}x{pixels}", gflop_per_call=flops / 1e9)
            if make is None:
                rows.append({**row, "note": "skipped (--no-trt)"})
                continue
            try:
                t0 = time.perf_counter()
                den = make()
                with torch.no_grad():
                    den(x, t, cond)
                    row["setup_s"] = time.perf_counter() - t0
                    row["ms_per_call"] = median_ms(lambda: den(x, t, cond), warmup=3, iters=args.iters, cuda=True)
                row["tflops"] = flops / (row["ms_per_call"] * 1e-3) / 1e12
                row["pct_of_matmul_peak"] = 100 * row["tflops"] / peak
            except Exception as e:  # recorded, not hidden: e.g. TensorRT not installed
                row["note"] = f"{type(e).__name__}: {e}"
            rows.append(row)
            torch.cuda.empty_cache()
    return rows, peak


def markdown(rows: list[dict], peak: float | None) -> str:
    cols = ["device", "backend", "batch", "latent", "ms_per_call", "ms_per_score", "tflops", "pct_of_matmul_peak",
            "setup_s", "note"]
    cols = [c for c in cols if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    if peak is not None:
        lines.append(f"\nmeasured fp16 8192³ matmul peak: {peak:.1f} TFLOP/s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (torch and ORT)")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--candidates", type=int, default=4, help="K noises per CPU score (UNet batch 2K)")
    p.add_argument("--steps", type=int, default=4, help="DDIM steps N = N' in the CPU score")
    p.add_argument("--gpu-batch", type=int, default=2, help="UNet batch on GPU (2 = one image with CFG)")
    p.add_argument("--skip-cpu", action="store_true")
    p.add_argument("--skip-gpu", action="store_true")
    p.add_argument("--no-trt", action="store_true", help="skip TensorRT (an SDXL engine build takes minutes)")
    p.add_argument("--work-dir", default=tempfile.gettempdir(), help="where GPU ONNX exports go")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, peak = [], None
    if not args.skip_cpu:
        rows += bench_cpu(args)
    if not args.skip_gpu and torch.cuda.is_available():
        gpu_rows, peak = bench_gpu(args)
        rows += gpu_rows
    print(markdown(rows, peak))
    if args.json:
        env = dict(torch=torch.__version__, python=platform.python_version(), cpu=platform.processor(),
                   threads=args.threads, cuda=torch.cuda.is_available())
        args.json.write_text(json.dumps({"env": env, "matmul_tflops": peak, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
