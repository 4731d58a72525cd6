"""noisefast side by side with what one would otherwise write, on this machine, in one run.

    python -m bench.compare --json out.json --md out.md [--quick] [--device cpu|cuda]

Parts (each reuses the measuring code of its bench/ module):
  1. kernels   fused ops (noisefast.ops) vs the same math in eager torch (noisefast.ref): speed-up; on a GPU
               the fused op's GB/s next to a device copy measured in the same run  (bench_kernels cases)
  2. scoring   noises/s, noisefast `stability_score` vs two diffusers users (bench.diffusers_users), same model
               and settings: per seed, and batched (``batch`` seeds per call, the strongest; the headline ratio
               is against it). CPU: the tiny random SDXL pipeline, pipeline calls + DDIMInverseScheduler loop
               (bench_scoring), and the UNet-only loops (compare_scoring). GPU: the full-size SDXL UNet
               (random weights, fp16), SDXL-Turbo-style 1+1 trailing steps at 512², batch 8, the UNet-only
               loops (compare_scoring; bench/gpu_scoring.py has the full matrix)
  3. optimize  seconds per iteration and memory of Algorithm 2, checkpointed vs plain autograd (bench_optimize)
  4. unet      UNet-call time and achieved TFLOP/s vs a matmul peak measured in the same run (compare_unet);
               GPU: full-size SDXL UNet fp16 at 512² and 1024², batch 1, 8, 32, within --budget-s
  5. digits    the quick start's model end to end (bench.compare_digits): noisefast auto vs eager torch at the
               CLI's defaults, idle and beside a competing CPU-bound process; optimization s/iteration on ONNX
               Runtime forward + torch backward vs all-torch
  6. realscale opt-in (``--parts realscale``, minutes, ~14 GB): the full-size SDXL UNet with random weights at 512²,
               1+1 steps, batch 2, no CFG on CPU — eager / ONNX Runtime / compile per call, a stability score
               each, the external-data export and its ORT parity (bench.realscale)
Every number is kept with its spread (median, quartiles, min, max, n) in the JSON; the markdown shows medians.
A part that fails is recorded with its error and the others still run (exit status 1 then).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback

import torch

from bench.common import command_line, machine_info, summarize, write_json, write_text
from bench.compare_report import markdown

PARTS = ("kernels", "scoring", "optimize", "unet", "digits")
OPT_IN_PARTS = ("realscale",)  # minutes and ~14 GB: only when named in --parts
TURBO = {"timestep_spacing": "trailing"}  # SDXL-Turbo's scheduler = SDXL's with trailing spacing


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --- 1. kernels -------------------------------------------------------------------------------------------


def kernels_part(device: str, quick: bool) -> dict:
    from bench import bench_kernels as bk

    cuda = device == "cuda"
    dtypes = ([torch.float16] if quick else bk.GPU_DTYPES) if cuda else [torch.float32]
    rounds = (20 if quick else 100) if cuda else (10 if quick else 40)
    rows = bk.measure(rounds, targets=[(device, dt) for dt in dtypes], shapes=bk.SHAPES[:1] if quick else bk.SHAPES)
    speedups = [r["speedup"] for r in rows]
    return {"rows": rows, "rounds": rounds, "geomean_speedup": math.exp(sum(map(math.log, speedups)) / len(speedups)),
            "min_pct_of_copy": min(r["pct_of_copy"] for r in rows),
            "note": "fused GB/s = latent-sized tensors the op must move × bytes / median time; copy = dst.copy_(src)"}


# --- 2. scoring -------------------------------------------------------------------------------------------


def scoring_part(device: str, quick: bool, unet=None) -> dict:
    """Runs of noisefast vs the per-seed and the batched diffusers user; ``ratio``: the smallest run's ratio
    against its strongest baseline (the headline)."""
    from bench.compare_scoring import scoring_unet_loop
    from noisefast.testing import SDXL_SCHEDULER_CONFIG

    if device == "cuda":  # full-size SDXL UNet, Turbo-style 1+1 steps, no CFG, batch 8
        res = scoring_unet_loop(unet, {**SDXL_SCHEDULER_CONFIG, **TURBO}, seeds=8 if quick else 16, pixels=512,
                                steps=1, inversion_steps=1, guidance=0.0, inversion_guidance=1.0, batch=8,
                                repeats=1 if quick else 3)
        return {"runs": [res], "ratio": res["ratio"]}
    from bench import bench_scoring
    from noisefast.testing import tiny_unet

    seeds, steps, repeats = (4, 2, 2) if quick else (8, 4, 3)
    pipe = bench_scoring.run(seeds=seeds, steps=steps, guidance=5.0, inversion_guidance=1.0, size=64, batch=seeds,
                             repeats=repeats)
    pipe.pop("benchmark", None)
    loop = scoring_unet_loop(tiny_unet(), SDXL_SCHEDULER_CONFIG, seeds=seeds, pixels=64, steps=steps,
                             inversion_steps=steps, guidance=5.0, inversion_guidance=1.0, batch=seeds, repeats=repeats,
                             backend="auto", compile_baseline=True)
    return {"runs": [pipe, loop], "ratio": min(pipe["ratio"], loop["ratio"])}


# --- 3. optimize ------------------------------------------------------------------------------------------


def optimize_part(device: str, quick: bool, unet=None, steps=None) -> dict:
    """Checkpointed vs plain autograd; on CUDA s/iteration and ``torch.cuda.max_memory_allocated`` at each of
    ``steps`` (default [1]; [1, 4, 10] shows whether memory stays flat in the steps), no saved-bytes count."""
    from bench import bench_optimize as bo

    if device == "cuda":  # full-size SDXL UNet fp16, fp32 noise, 512², Turbo 1+1 steps, no CFG
        from bench.compare_unet import random_condition
        from noisefast.denoisers.unet import UNetDenoiser
        from noisefast.testing import SDXL_SCHEDULER_CONFIG

        dev = unet.device
        noise = torch.randn(1, 4, 64, 64, generator=torch.Generator(dev).manual_seed(0), device=dev)
        cond = random_condition(unet.config, 1, 512, dev, unet.dtype)
        rows, ratios = bo.measure(UNetDenoiser(unet), noise, cond, steps or [1],
                                  scheduler_config={**SDXL_SCHEDULER_CONFIG, **TURBO}, guidance=0.0, warmup=1,
                                  iters=2 if quick else 3, repeats=1, cuda_memory=dev.type == "cuda",
                                  extras=dev.type != "cuda")
        where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
        res = {"model": f"SDXL UNet (random weights), {_dtype_name(unet.dtype)}, {where}",
               "latent": list(noise.shape), "rows": rows, "ratios": ratios}
    elif steps:
        res = bo.run_cpu(steps, size=64 if quick else 128, batch=1, guidance=0.0, warmup=1, iters=2 if quick else 3,
                         repeats=1 if quick else 2)
    elif quick:
        res = bo.run_cpu([2], size=64, batch=1, guidance=0.0, warmup=1, iters=2, repeats=1)
    else:
        res = bo.run_cpu([4], size=128, batch=1, guidance=0.0, warmup=1, iters=3, repeats=2)
    for r in res["rows"]:
        r["s_per_iter_stats"] = summarize(r.pop("s_per_iter_all"))
    return res


# --- 4. UNet calls vs the matmul peak ---------------------------------------------------------------------


def unet_part(device: str, quick: bool, unet=None, budget_s: float = 240.0, compile_: bool = False) -> dict:
    from bench.compare_unet import DOCUMENTED_TFLOP_PER_CALL, matmul_peak, unet_calls

    if device == "cuda":
        peak = matmul_peak(unet.device, torch.float16, 8192, 20)
        resolutions, batches, documented = (512, 1024), (1, 8, 32), DOCUMENTED_TFLOP_PER_CALL
        compile_at = [(1024, 8)] if compile_ else []
        iters = 5 if quick else 10
        model = f"SDXL UNet (random weights), {_dtype_name(unet.dtype)}"
    else:
        from noisefast.testing import tiny_unet

        unet = tiny_unet()
        peak = matmul_peak("cpu", torch.float32, 1024 if quick else 2048, 5 if quick else 10)
        resolutions, batches, documented, compile_at = ((128,) if quick else (128, 256)), (1, 8), None, []
        iters = 3 if quick else 20
        model = "tiny random SDXL-architecture UNet, float32"
    rows, skipped = unet_calls(unet, resolutions, batches, iters=iters, peak_tflops=peak["tflops"], budget_s=budget_s,
                               compile_at=compile_at, documented=documented)
    return {"model": model, "matmul_peak": peak, "rows": rows, "skipped": skipped, "budget_s": budget_s}


# --- 5. the built-in model end to end; 6. the full-size SDXL UNet on CPU (opt-in) ------------------------


def digits_part(device: str, quick: bool) -> dict:
    from bench import compare_digits

    if device != "cpu":
        return {"skipped": "the built-in model's comparison is a CPU measurement"}
    # eager torch on 2 threads is left out: on a shared 2-core machine its spin-waiting threads take minutes per run
    # (python -m bench.compare_digits times it)
    return compare_digits.run(seeds=64 if quick else 200, repeats=2 if quick else 3, contention=(0,) if quick else (0, 1),
                              iterations=2 if quick else 5, torch_2_threads=False)


def realscale_part(device: str) -> dict:
    from bench import realscale

    if device != "cpu":
        return {"skipped": "the real-scale part measures the CPU (on a GPU: bench/gpu_check.sh)"}
    return realscale.run()


# --- the run ----------------------------------------------------------------------------------------------


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with the measured value and whether it is met (None: not measured here)."""
    cuda = result["settings"]["device"] == "cuda"
    out = []
    sc = result.get("scoring", {})
    if "ratio" in sc:
        out.append(dict(what="scoring throughput vs the strongest diffusers user (batched, batched + torch.compile)",
                        target="≥ 1.3× (goal 1.5×)", value=sc["ratio"], unit="×", met=sc["ratio"] >= 1.3))
    for c in result.get("digits", {}).get("scoring", {}).get("conditions", []):
        n = c["competing_processes"]
        goal = (2.0, "≥ 2×") if n == 0 else (1.0, "≥ 1× (never slower)")
        out.append(dict(what=f"builtin:digits select, auto vs eager torch (CLI defaults), {n} competing CPU-bound "
                             f"process(es), load {c['load_average_1m'][0]:.1f}",
                        target=goal[1], value=c["auto_vs_torch"], unit="×", met=c["auto_vs_torch"] >= goal[0]))
    un = result.get("unet", {})
    big = [r for r in un.get("rows", []) if cuda and r["resolution"] == 1024 and r["batch"] >= 8]
    out.append(dict(what="UNet forward % of matmul peak, 1024², batch ≥ 8, best backend", target="≥ 50%",
                    value=max((r["pct_of_matmul_peak"] for r in big), default=None), unit="%",
                    met=max(r["pct_of_matmul_peak"] for r in big) >= 50 if big else None))
    kr = result.get("kernels", {})
    out.append(dict(what="fused kernels % of device-copy bandwidth (worst op)", target="≥ 85% (GPU)",
                    value=kr.get("min_pct_of_copy") if cuda else None, unit="%",
                    met=kr["min_pct_of_copy"] >= 85 if cuda and "min_pct_of_copy" in kr else None))
    return out


def run(device: str, quick: bool, parts=PARTS, budget_s: float = 240.0, compile_: bool = False, *,
        optimize_steps=None, on_part=None) -> dict:
    """Measure ``parts`` on ``device``; returns the JSON-ready result (errors recorded per part).

    ``on_part(result)`` is called after each part (the runner writes its JSON there, so a time limit keeps what
    was measured)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    parts = list(parts)
    unknown = set(parts) - set(PARTS) - set(OPT_IN_PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS + OPT_IN_PARTS}")
    result = {"benchmark": "noisefast.compare", "command": command_line(), "machine": machine_info(),
              "settings": dict(device=device, quick=quick, parts=list(parts), budget_s=budget_s, compile=compile_)}
    if optimize_steps:
        result["settings"]["optimize_steps"] = list(optimize_steps)
    unet = None
    if device == "cuda" and set(parts) & {"scoring", "optimize", "unet"}:
        from bench.compare_unet import build_unet, sdxl_unet_config

        t0 = time.perf_counter()
        try:  # a failure here fails the parts that need the model (recorded there), not the kernels
            unet = build_unet(sdxl_unet_config(), "cuda", torch.float16)
        except Exception as e:
            result["settings"]["model_error"] = f"{type(e).__name__}: {e}"
        result["settings"]["model_build_s"] = time.perf_counter() - t0
    funcs = {"kernels": lambda: kernels_part(device, quick), "scoring": lambda: scoring_part(device, quick, unet),
             "optimize": lambda: optimize_part(device, quick, unet, optimize_steps),
             "unet": lambda: unet_part(device, quick, unet, budget_s, compile_),
             "digits": lambda: digits_part(device, quick), "realscale": lambda: realscale_part(device)}
    for part in parts:
        print(f"[compare] {part} on {device}{' (quick)' if quick else ''} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            result[part] = funcs[part]()
        except Exception as e:  # recorded; the other parts still run
            result[part] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        except KeyboardInterrupt:  # Ctrl-C or a time limit's SIGINT: keep what was measured, skip the rest
            result[part] = {"error": "interrupted", "wall_s": time.perf_counter() - t0}
            result["settings"]["parts"] = parts[: parts.index(part) + 1]
            break
        result[part]["wall_s"] = time.perf_counter() - t0
        if device == "cuda":
            torch.cuda.empty_cache()
        if on_part is not None:
            on_part({**result, "targets": targets(result)})
    result["targets"] = targets(result)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="write every number here")
    p.add_argument("--md", required=True, help="write the markdown tables here")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (a minute or two on a CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)}; opt-in: {','.join(OPT_IN_PARTS)}")
    p.add_argument("--budget-s", type=float, default=240.0, help="time budget of part 4 (UNet calls), seconds")
    p.add_argument("--compile", action="store_true", help="part 4 on CUDA: also torch.compile at 1024², batch 8")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--optimize-steps", type=int, nargs="+", default=None,
                   help="part 3: N of the N+N steps to measure (CUDA default 1; e.g. 1 4 10: memory flat in N?)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    parts = [s.strip() for s in a.parts.split(",") if s.strip()]
    result = run(a.device, a.quick, parts, a.budget_s, a.compile, optimize_steps=a.optimize_steps,
                 on_part=lambda partial: write_json(a.json, partial))
    write_json(a.json, result)
    md = markdown(result)
    write_text(a.md, md)
    print(md)
    return 1 if any("error" in result.get(part, {}) for part in parts) else 0


if __name__ == "__main__":
    raise SystemExit(main())
