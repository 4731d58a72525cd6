"""Noise optimization (Algorithm 2): time per iteration and memory, activation checkpointing vs plain autograd.

One iteration = s(ε) with its gradient through all 2N UNet calls of F = I∘D (N denoising + N inversion
steps; no CFG by default, so one UNet call per move) + the fused momentum update. Both modes run
`noisefast.optimize_noise` on the same model, noise and condition, alternately, in one process:

* ``checkpoint``: ``checkpoint=True`` (the default): each UNet call + move recomputed in backward;
* ``plain``: ``checkpoint=False``: plain autograd keeps every UNet call's activations.

Measured per (N, mode): seconds per iteration (median over ``--iters`` iterations × ``--repeats`` runs,
after ``--warmup`` iterations of each run; timed between consecutive ``callback`` calls, which bracket one
gradient evaluation and one update) and, counted by a ``saved_tensors_hooks`` pack hook
(`noisefast.optimize.SavedBytes`): ``saved_bytes``, what the graph of s(ε) holds for backward when the
backward starts, and ``peak_saved_bytes``, the most alive at once during one whole iteration — with
checkpointing that is reached in backward, where one step at a time is recomputed with its activations.
Targets: time(checkpoint) ≤ 1.4 × time(plain); saved(checkpoint) ≤ saved(plain) / (2N).

CPU (tiny random SDXL-architecture UNet, fp32):

    python bench/bench_optimize.py --steps 4 10 --threads 1 --json bench/results/optimize_cpu.json

GPU (full-size SDXL UNet with random weights from ``bench/configs/sdxl_unet.json``, fp16 UNet with fp32
noise/velocity/loss, 512×512, SDXL-Turbo-style 1 + 1 trailing steps without CFG) — seconds per iteration and
``torch.cuda.max_memory_allocated``:

    python bench/bench_optimize.py --gpu --json bench/results/optimize_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SDXL_UNET_CONFIGS = (  # the repo's copy first, then the shared model folder
    os.path.join(HERE, "configs", "sdxl_unet.json"),
    os.path.join(HERE, "..", "..", "shared", "models", "sdxl-base-1.0", "unet", "config.json"),
)
MODES = {"checkpoint": True, "plain": False}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def iteration_times(den, sched, noise, cond, *, checkpoint, guidance, warmup, iters) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of each full iteration (gradient evaluation + update) after ``warmup``."""
    from noisefast.optimize import optimize_noise

    stamps = []

    def callback(state):
        _sync(noise.device)
        stamps.append((time.perf_counter(), time.process_time()))

    # callback k fires after s(ε_k) (and its gradient); k → k+1 spans update k + evaluation k+1 (with its
    # gradient while k+1 < steps), so with steps = warmup + iters + 1 the intervals warmup … warmup+iters−1 count
    res = optimize_noise(den, sched, noise, cond, steps=warmup + iters + 1, guidance_scale=guidance,
                         checkpoint=checkpoint, callback=callback)
    if res.stop_reason != "steps":
        raise RuntimeError(f"the timed run stopped early ({res.stop_reason}); stability history {res.history.tolist()}")
    spans = list(zip(stamps[warmup : warmup + iters], stamps[warmup + 1 : warmup + iters + 1]))
    return [b[0] - a[0] for a, b in spans], [b[1] - a[1] for a, b in spans]


def saved_bytes(den, sched, noise, cond, *, checkpoint, guidance) -> tuple[int, int]:
    """(bytes the graph of s(ε) holds when the backward starts, the most alive at once in one iteration).

    The second includes the activations of the one step recomputed at a time in a checkpointed backward.
    """
    from noisefast.optimize import SavedBytes, optimize_noise
    from noisefast.stability import stability_score

    with SavedBytes() as graph:  # forward only: everything saved is still alive at its end
        stability_score(den, sched, noise.clone().requires_grad_(), cond, guidance, checkpoint=checkpoint)
    with SavedBytes() as iteration:  # steps=1: one gradient iteration (the final evaluation saves nothing)
        optimize_noise(den, sched, noise, cond, steps=1, guidance_scale=guidance, checkpoint=checkpoint)
    return graph.total, iteration.peak


def peak_cuda_bytes(den, sched, noise, cond, *, checkpoint, guidance) -> int:
    from noisefast.optimize import optimize_noise

    torch.cuda.synchronize(noise.device)
    torch.cuda.reset_peak_memory_stats(noise.device)
    optimize_noise(den, sched, noise, cond, steps=1, guidance_scale=guidance, checkpoint=checkpoint)
    torch.cuda.synchronize(noise.device)
    return torch.cuda.max_memory_allocated(noise.device)


def recompute_bound(den, sched, noise, cond, *, guidance, repeats=3) -> dict:
    """Per-iteration costs behind the time ratio: F without grad, F recording a graph, F + backward (plain).

    Any scheme that keeps O(1) activations runs F once without a graph (for the loss) and again with one
    (in backward), so time(checkpoint) / time(plain) ≥ (F_nograd + F_grad + B) / (F_grad + B), B the backward.
    Timed in process CPU time on CPU (robust on a shared machine), wall time on CUDA.
    """
    from noisefast.stability import stability_score

    clock = time.perf_counter if noise.device.type == "cuda" else time.process_time

    def timed(fn):
        fn()
        out = []
        for _ in range(repeats):
            _sync(noise.device)
            t = clock()
            fn()
            _sync(noise.device)
            out.append(clock() - t)
        return statistics.median(out)

    def forward_nograd():
        with torch.no_grad():
            stability_score(den, sched, noise, cond, guidance)

    def forward_grad():
        return stability_score(den, sched, noise.clone().requires_grad_(), cond, guidance)

    def forward_backward():
        x = noise.clone().requires_grad_()
        torch.autograd.grad(stability_score(den, sched, x, cond, guidance).sum(), x)

    f_ng, f_g, fb = timed(forward_nograd), timed(forward_grad), timed(forward_backward)
    return {"forward_nograd_s": f_ng, "forward_grad_s": f_g, "plain_forward_backward_s": fb,
            "bound": (f_ng + fb) / fb}


def measure(den, noise, cond, steps_list, *, scheduler_config, guidance, warmup, iters, repeats, cuda_memory=False,
            extras=True):
    """Rows {steps, unet_calls, mode, s_per_iter, saved_bytes[, cuda_max_memory_allocated]} + ratios per N.

    ``extras=False`` skips the saved-bytes count and the recompute bound (two more iterations and nine more
    chain runs per N: a GPU run with a time budget keeps time and ``torch.cuda.max_memory_allocated``); their
    fields are then None."""
    from noisefast.schedule import DDIMSchedule

    rows, ratios = [], []
    for n in steps_list:
        sched = DDIMSchedule.from_config(scheduler_config, n, n)
        calls = 2 * n  # one UNet call per move (with CFG both halves go in one call of twice the rows)
        times = {m: [] for m in MODES}
        cpu_times = {m: [] for m in MODES}
        for _ in range(repeats):  # alternate the modes so that drift in machine load hits both
            for mode, ck in MODES.items():
                wall, cpu = iteration_times(den, sched, noise, cond, checkpoint=ck, guidance=guidance, warmup=warmup,
                                            iters=iters)
                times[mode] += wall
                cpu_times[mode] += cpu
        by_mode = {}
        for mode, ck in MODES.items():
            row = {
                "steps": n,
                "unet_calls": calls,
                "mode": mode,
                "s_per_iter": statistics.median(times[mode]),
                "s_per_iter_all": times[mode],
                "cpu_s_per_iter": statistics.median(cpu_times[mode]),  # process CPU time (all threads)
            }
            row["saved_bytes"], row["peak_saved_bytes"] = (saved_bytes(den, sched, noise, cond, checkpoint=ck,
                                                                        guidance=guidance) if extras else (None, None))
            if cuda_memory:
                row["cuda_max_memory_allocated"] = peak_cuda_bytes(den, sched, noise, cond, checkpoint=ck,
                                                                   guidance=guidance)
            rows.append(row)
            by_mode[mode] = row
        ck_row, plain_row = by_mode["checkpoint"], by_mode["plain"]
        time_ratio = ck_row["s_per_iter"] / plain_row["s_per_iter"]
        cpu_time_ratio = ck_row["cpu_s_per_iter"] / plain_row["cpu_s_per_iter"]
        saved_ratio = ck_row["saved_bytes"] / plain_row["saved_bytes"] if extras else None
        ratios.append({
            **(recompute_bound(den, sched, noise, cond, guidance=guidance) if extras else {"bound": None}),
            "steps": n,
            "unet_calls": calls,
            "time_ratio": time_ratio,
            "time_target_met": time_ratio <= 1.4,
            "cpu_time_ratio": cpu_time_ratio,
            "saved_ratio": saved_ratio,
            "saved_target": 1 / calls,
            "saved_target_met": saved_ratio <= 1 / calls if extras else None,
        })
    return rows, ratios


def run_cpu(steps_list, *, size, batch, guidance, warmup, iters, repeats, seed=0):
    from noisefast.denoisers.unet import UNetDenoiser
    from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition, tiny_unet

    den = UNetDenoiser(tiny_unet(seed))
    noise = torch.randn(batch, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    cond = tiny_condition(seed=seed)
    rows, ratios = measure(den, noise, cond, steps_list, scheduler_config=SDXL_SCHEDULER_CONFIG, guidance=guidance,
                           warmup=warmup, iters=iters, repeats=repeats)
    model = f"tiny random SDXL-architecture UNet ({sum(p.numel() for p in den.unet.parameters())} parameters), fp32, CPU"
    return {"model": model, "latent": list(noise.shape), "rows": rows, "ratios": ratios}


def sdxl_unet_config(path: str | None) -> dict:
    for candidate in ([path] if path else SDXL_UNET_CONFIGS):
        if candidate and os.path.isfile(candidate):
            with open(candidate) as f:
                return json.load(f)
    raise FileNotFoundError(f"no SDXL UNet config at {path or SDXL_UNET_CONFIGS}")


def run_gpu(steps_list, *, size, batch, guidance, warmup, iters, repeats, config_path=None, device="cuda",
            dtype="float16", seed=0):
    """Full-size SDXL UNet, random weights, fp16 on CUDA; fp32 noise, velocity and loss.

    (``device="cpu"``, ``dtype="float32"`` and a small ``config_path`` dry-run the same code without a GPU.)
    """
    from diffusers import UNet2DConditionModel

    from noisefast.denoisers.base import Condition
    from noisefast.denoisers.unet import UNetDenoiser
    from noisefast.testing import SDXL_SCHEDULER_CONFIG

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    config = sdxl_unet_config(config_path)
    torch.manual_seed(seed)
    with device:  # built on the device: no multi-GB fp32 copy in host memory
        unet = UNet2DConditionModel.from_config(config).to(getattr(torch, dtype)).eval()
    unet.requires_grad_(False)  # frozen: only the noise is optimised
    den = UNetDenoiser(unet)
    g = torch.Generator(device).manual_seed(seed)
    noise = torch.randn(batch, config["in_channels"], size // 8, size // 8, generator=g, device=device)  # fp32
    r = lambda *s: torch.randn(*s, generator=g, device=device, dtype=unet.dtype)  # noqa: E731
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]  # 1280
    cond = Condition(
        prompt_embeds=r(batch, 77, config["cross_attention_dim"]),
        pooled_prompt_embeds=r(batch, pooled),
        time_ids=torch.tensor([[size, size, 0, 0, size, size]], dtype=unet.dtype, device=device).expand(batch, 6),
        negative_prompt_embeds=r(batch, 77, config["cross_attention_dim"]),
        negative_pooled_prompt_embeds=r(batch, pooled),
    )
    scheduler_config = {**SDXL_SCHEDULER_CONFIG, "timestep_spacing": "trailing"}  # SDXL-Turbo's
    rows, ratios = measure(den, noise, cond, steps_list, scheduler_config=scheduler_config, guidance=guidance,
                           warmup=warmup, iters=iters, repeats=repeats, cuda_memory=device.type == "cuda")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return {
        "model": f"SDXL UNet config ({sum(p.numel() for p in unet.parameters()) / 1e9:.3f} B parameters, random "
                 f"weights), {dtype}, {where}",
        "latent": list(noise.shape),
        "rows": rows,
        "ratios": ratios,
    }


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(result: dict) -> str:
    mem = any("cuda_max_memory_allocated" in r for r in result["rows"])
    header = ["steps (N+N)", "UNet calls", "mode", "s / iteration (wall)", "CPU s / iteration",
              "saved for backward (MiB)", "peak alive in an iteration (MiB)"] + (["CUDA peak (GiB)"] if mem else [])
    rows = []
    for r in result["rows"]:
        row = [f"{r['steps']}+{r['steps']}", str(r["unet_calls"]), r["mode"], f"{r['s_per_iter']:.3f}",
               f"{r['cpu_s_per_iter']:.3f}", f"{r['saved_bytes'] / 2**20:.3f}", f"{r['peak_saved_bytes'] / 2**20:.3f}"]
        rows.append(row + ([f"{r['cuda_max_memory_allocated'] / 2**30:.2f}"] if mem else []))
    lines = [f"{result['model']}; latent {result['latent']}", ""] + _table(header, rows) + [""]
    header = ["steps", "time checkpoint / plain, wall (target ≤ 1.4)", "CPU time ratio",
              "recompute bound (F_nograd + F_grad + B) / (F_grad + B), CPU time on CPU", "saved checkpoint / plain (target ≤ 1/calls)"]
    mark = lambda ok: "✓" if ok else "✗"  # noqa: E731
    rows = [[f"{q['steps']}+{q['steps']}", f"{q['time_ratio']:.3f} {mark(q['time_target_met'])}",
             f"{q['cpu_time_ratio']:.3f}", f"{q['bound']:.3f}",
             f"{q['saved_ratio']:.5f} (1/{q['unet_calls']} = {q['saved_target']:.4f}) {mark(q['saved_target_met'])}"]
            for q in result["ratios"]]
    return "\n".join(lines + _table(header, rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="full-size SDXL UNet (random weights, fp16) on CUDA")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="N (denoise = inversion steps); default 4 10, GPU 1")
    p.add_argument("--size", type=int, default=None, help="image size (latent size/8); default 128, GPU 512")
    p.add_argument("--batch", type=int, default=1, help="noises optimised together")
    p.add_argument("--guidance", type=float, default=0.0, help="denoising CFG scale (≤ 1: no CFG, one UNet call per move)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per run")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per run")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode (alternating)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--unet-config", default=None, help="SDXL UNet config.json (GPU; default bench/configs/sdxl_unet.json)")
    p.add_argument("--device", default="cuda", help="--gpu: the device (cpu with a small --unet-config: a dry run)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="--gpu: UNet dtype")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH", help="write JSON (stdout if no PATH)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    kw = dict(batch=a.batch, guidance=a.guidance, warmup=a.warmup, iters=a.iters, repeats=a.repeats)
    if a.gpu:
        res = run_gpu(a.steps or [1], size=a.size or 512, config_path=a.unet_config, device=a.device, dtype=a.dtype,
                      **kw)
    else:
        res = run_cpu(a.steps or [4, 10], size=a.size or 128, **kw)
    res["settings"] = {**vars(a), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "python": platform.python_version(), "machine": platform.machine()}
    res["command"] = "python bench/bench_optimize.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(markdown(res), file=sys.stderr if a.json == "-" else sys.stdout)
    if a.json == "-":
        print(json.dumps(res, indent=2))
    elif a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
