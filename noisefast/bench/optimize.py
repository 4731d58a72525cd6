"""``noisefast bench optimize``: Algorithm 2's seconds per iteration and memory, activation checkpointing vs plain
autograd, over the number of steps N of the N+N chain.

One iteration = s(ε) with its gradient through all 2N UNet calls of F = I∘D + the fused momentum update. Both modes
run `noisefast.optimize.optimize_noise` with the Engine's denoiser, schedule, condition and seed noise, alternately,
in one process:

* ``checkpoint``: ``checkpoint=True`` (the default): each UNet call + move recomputed in backward;
* ``plain``: ``checkpoint=False``: plain autograd keeps every UNet call's activations.

Measured per (N, mode): seconds per iteration (after ``warmup`` iterations of each run, ``iters`` iterations ×
``repeats`` alternated runs; timed between consecutive ``callback`` calls, which bracket one gradient evaluation and
one update, synchronised on CUDA); counted by a ``saved_tensors_hooks`` pack hook (`noisefast.optimize.SavedBytes`):
``saved_bytes`` (what the graph of s(ε) holds when the backward starts) and ``peak_saved_bytes`` (the most alive at
once in one iteration); on CUDA ``torch.cuda.max_memory_allocated`` of one iteration.
Targets: time(checkpoint) ≤ 1.4 × time(plain); saved(checkpoint) ≤ saved(plain) / (2N).
"""

from __future__ import annotations

import statistics
import time

import torch

from noisefast.bench.stats import headline
from noisefast.bench.timing import sync

MODES = {"checkpoint": True, "plain": False}


def iteration_times(den, sched, noise, cond, *, checkpoint, g, gi, warmup, iters) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of each full iteration (gradient evaluation + update) after ``warmup``."""
    from noisefast.optimize import optimize_noise

    stamps = []

    def callback(state):
        sync(noise.device)
        stamps.append((time.perf_counter(), time.process_time()))

    # callback k fires after s(ε_k) (and its gradient); k → k+1 spans update k + evaluation k+1 (with its
    # gradient while k+1 < steps), so with steps = warmup + iters + 1 the intervals warmup … warmup+iters−1 count
    res = optimize_noise(den, sched, noise, cond, steps=warmup + iters + 1, guidance_scale=g, inversion_guidance_scale=gi,
                         checkpoint=checkpoint, callback=callback)  # fmt: skip
    if res.stop_reason != "steps":
        raise RuntimeError(f"the timed run stopped early ({res.stop_reason}); stability history {res.history.tolist()}")
    spans = list(zip(stamps[warmup : warmup + iters], stamps[warmup + 1 : warmup + iters + 1]))
    return [b[0] - a[0] for a, b in spans], [b[1] - a[1] for a, b in spans]


def saved_bytes(den, sched, noise, cond, *, checkpoint, g, gi) -> tuple[int, int]:
    """(bytes the graph of s(ε) holds when the backward starts, the most alive at once in one iteration)."""
    from noisefast.optimize import SavedBytes, optimize_noise
    from noisefast.stability import stability_score

    with SavedBytes() as graph:  # forward only: everything saved is still alive at its end
        stability_score(den, sched, noise.clone().requires_grad_(), cond, g, gi, checkpoint=checkpoint)
    with SavedBytes() as iteration:  # steps=1: one gradient iteration (the final evaluation saves nothing)
        optimize_noise(den, sched, noise, cond, steps=1, guidance_scale=g, inversion_guidance_scale=gi,
                       checkpoint=checkpoint)  # fmt: skip
    return graph.total, iteration.peak


def peak_cuda_bytes(den, sched, noise, cond, *, checkpoint, g, gi) -> int:
    from noisefast.optimize import optimize_noise

    torch.cuda.synchronize(noise.device)
    torch.cuda.reset_peak_memory_stats(noise.device)
    optimize_noise(den, sched, noise, cond, steps=1, guidance_scale=g, inversion_guidance_scale=gi, checkpoint=checkpoint)
    torch.cuda.synchronize(noise.device)
    return torch.cuda.max_memory_allocated(noise.device)


def recompute_bound(den, sched, noise, cond, *, g, gi, repeats=3) -> dict:
    """Per-iteration costs behind the time ratio: F without grad, F recording a graph, F + backward (plain).

    Any scheme that keeps O(1) activations runs F once without a graph (for the loss) and again with one (in
    backward), so time(checkpoint) / time(plain) ≥ (F_nograd + F_grad + B) / (F_grad + B), B the backward.
    Timed in process CPU time on a CPU (robust on a shared machine), wall time on CUDA.
    """
    from noisefast.stability import stability_score

    clock = time.perf_counter if noise.device.type == "cuda" else time.process_time

    def timed(fn):
        fn()
        out = []
        for _ in range(repeats):
            sync(noise.device)
            t = clock()
            fn()
            sync(noise.device)
            out.append(clock() - t)
        return statistics.median(out)

    def forward_nograd():
        with torch.no_grad():
            stability_score(den, sched, noise, cond, g, gi)

    def forward_grad():
        return stability_score(den, sched, noise.clone().requires_grad_(), cond, g, gi)

    def forward_backward():
        x = noise.clone().requires_grad_()
        torch.autograd.grad(stability_score(den, sched, x, cond, g, gi).sum(), x)

    f_ng, f_g, fb = timed(forward_nograd), timed(forward_grad), timed(forward_backward)
    return {"forward_nograd_s": f_ng, "forward_grad_s": f_g, "plain_forward_backward_s": fb, "bound": (f_ng + fb) / fb}


def measure(run, engine, *, prompt: str, seeds: list[int], s, steps_list, warmup: int, iters: int, repeats: int,
            extras: bool) -> None:
    """Rows {steps, unet_calls, mode, s_per_iter, saved_bytes[, cuda_max_memory_allocated]} and ratios per N into
    ``run``. ``extras=False`` skips the saved-bytes count and the recompute bound (fields None)."""
    cuda, stat = engine.device.type == "cuda", run.result["timing"]["statistic"]
    cond = engine.condition(prompt, settings=s)
    g, gi = s.guidance_scale, s.inversion_guidance_scale
    noise = engine.noise(seeds, s).float()  # fp32 noise, velocity and loss whatever the UNet's dtype
    rows, ratios = run.results.setdefault("rows", []), run.results.setdefault("ratios", [])
    for n in steps_list:
        group = f"optimize {n}+{n}"
        with run.part(group):
            sched = engine.schedule(engine.settings(**{**s.as_dict(), "steps": n, "inversion_steps": n}))
            calls = 2 * n  # one UNet call per move (with CFG both halves go in one call of twice the rows)
            wall = {m: [] for m in MODES}
            cpu = {m: [] for m in MODES}
            for _ in range(repeats):  # alternate the modes so that drift in machine load hits both
                for mode, ck in MODES.items():
                    w, c = iteration_times(engine.den, sched, noise, cond, checkpoint=ck, g=g, gi=gi, warmup=warmup,
                                           iters=iters)  # fmt: skip
                    wall[mode] += w
                    cpu[mode] += c
            by_mode = {}
            for mode, ck in MODES.items():
                summary = run.add(group, mode, wall[mode], per=1, per_unit="iteration", unet_calls=calls)
                row = {"steps": n, "unet_calls": calls, "mode": mode, "s_per_iter": headline(summary, stat),
                       "s_per_iter_median": summary["median"], "cpu_s_per_iter": statistics.median(cpu[mode])}  # fmt: skip
                row["saved_bytes"], row["peak_saved_bytes"] = (
                    saved_bytes(engine.den, sched, noise, cond, checkpoint=ck, g=g, gi=gi) if extras else (None, None))
                if cuda:
                    row["cuda_max_memory_allocated"] = peak_cuda_bytes(engine.den, sched, noise, cond, checkpoint=ck,
                                                                       g=g, gi=gi)  # fmt: skip
                rows.append(row)
                by_mode[mode] = row
            ck_row, plain_row = by_mode["checkpoint"], by_mode["plain"]
            time_ratio = ck_row["s_per_iter"] / plain_row["s_per_iter"]
            saved_ratio = ck_row["saved_bytes"] / plain_row["saved_bytes"] if extras else None
            ratios.append({
                **(recompute_bound(engine.den, sched, noise, cond, g=g, gi=gi) if extras else {"bound": None}),
                "steps": n, "unet_calls": calls, "time_ratio": time_ratio, "time_target_met": time_ratio <= 1.4,
                "cpu_time_ratio": ck_row["cpu_s_per_iter"] / plain_row["cpu_s_per_iter"], "saved_ratio": saved_ratio,
                "saved_target": 1 / calls, "saved_target_met": saved_ratio <= 1 / calls if extras else None,
            })  # fmt: skip
    run.results["latent"] = list(noise.shape)
