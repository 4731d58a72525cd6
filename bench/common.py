"""Measuring helpers shared by the bench/ scripts: timing, summaries, machine facts, JSON + markdown writers.

Timing rules used everywhere here:
  * warm-up calls first (untimed): allocator, autotuning, lazy init, caches;
  * CPU: ``time.perf_counter`` around each call;
  * CUDA: a pair of CUDA events on the current stream around each call, synchronised on the end event,
    so each sample is device time of that call alone (``device`` names where the work runs);
  * several implementations are timed round-robin (A, B, A, B, ...) so that load drift on a shared
    machine hits all of them alike;
  * reported: the median, with the spread (min, quartiles, max, n) kept next to it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import torch


def sync(device) -> None:
    """Wait for queued work on ``device`` (no-op off CUDA)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed_ms(fn: Callable[[], object], cuda: bool) -> float:
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_round_robin(fns: Mapping[str, Callable[[], object]], rounds: int, *, device="cpu",
                     warmup: int = 1) -> dict[str, list[float]]:
    """Milliseconds of each ``fns[name]()`` per round, ``rounds`` rounds after ``warmup`` calls of each."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    cuda = torch.device(device).type == "cuda"
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_timed_ms(fn, cuda))
    return times


def time_ms(fn: Callable[[], object], iters: int, *, device="cpu", warmup: int = 1) -> list[float]:
    """Milliseconds of ``iters`` calls of ``fn()`` after ``warmup`` untimed ones."""
    return time_round_robin({"fn": fn}, iters, device=device, warmup=warmup)["fn"]


def time_wall_s(fn: Callable[[], object], *, device="cpu") -> tuple[float, object]:
    """(seconds, result) of one call of ``fn()``, synchronised before and after (whole multi-launch runs)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def summarize(samples: Sequence[float]) -> dict:
    """{"median", "min", "q1", "q3", "max", "n"} of ``samples`` (quartiles: inclusive method; n < 2 → min = max)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("summarize needs at least one sample")
    q1, q3 = statistics.quantiles(xs, n=4, method="inclusive")[::2] if len(xs) > 1 else (xs[0], xs[0])
    return {"median": statistics.median(xs), "min": xs[0], "q1": q1, "q3": q3, "max": xs[-1], "n": len(xs)}


def spread_pct(summary: Mapping) -> float:
    """Interquartile range relative to the median, in percent (how much one number can be trusted)."""
    return 100.0 * (summary["q3"] - summary["q1"]) / summary["median"] if summary["median"] else float("nan")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    """Installed version without importing the package (None when it is not installed)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(root: str | None = None) -> str | None:
    """``git describe --always --dirty`` of the checkout holding bench/ (None outside git)."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict:
    """Where and with what a measurement ran: date, CPU, load, GPU, library versions, noisefast build."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gpu": None,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                       "multiprocessors": p.multi_processor_count, "capability": f"{p.major}.{p.minor}",
                       "cuda_runtime": torch.version.cuda}
    info["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                        **{m: _version(m) for m in ("diffusers", "transformers", "numpy", "noisefast")}}
    try:
        import noisefast

        info["noisefast_build"] = noisefast._ext.build_info()
    except Exception as e:  # the runner still reports what it measured without the package's build facts
        info["noisefast_build"] = f"unavailable: {type(e).__name__}: {e}"
    info["git"] = git_commit()
    return info


def command_line() -> str:
    """The command that is running, as one would type it again."""
    mod = sys.modules.get("__main__")
    spec = getattr(mod, "__spec__", None)
    if spec is not None and spec.name:
        return " ".join(["python -m", spec.name, *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def md_table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` one char per column ('l' or 'r', default: all left)."""
    align = align or "l" * len(header)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError(f"table columns disagree: header {len(header)}, align {len(align)}, "
                         f"rows {sorted({len(r) for r in rows})}")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return str(obj) if not isinstance(obj, torch.Size) else list(obj)
    if isinstance(obj, float) and obj != obj:  # NaN: not valid JSON
        return None
    return obj


def write_json(path, obj) -> None:
    """Strict JSON (NaN → null, tensors → lists), folders created."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_jsonable(obj), f, indent=1, allow_nan=False)
        f.write("\n")


def write_text(path, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


# --- scoring comparisons ---------------------------------------------------------------------------------

SCORE_ULPS_PER_CALL = 16  # error model of `score_tolerance`


def score_tolerance(dtype: torch.dtype, unet_calls: int) -> float:
    """How far two correct implementations' stability scores may differ: 16 units of ``dtype``'s rounding per UNet
    call, added over the chain.

    Error model: each UNet call returns its output with a relative error of a few ε of its storage dtype (other
    batch sizes, kernels or summation orders round differently); a DDIM move is affine, so those errors reach the
    returned latent scaled by O(1) coefficients and add up over the calls; a cosine moves by at most the relative
    error of its argument. fp32: 1.9e-6 per call; fp16: 1.6e-2 per call (the loose end: differences there are
    reported, and judged next to this bound, not asserted).
    """
    return SCORE_ULPS_PER_CALL * torch.finfo(dtype).eps * max(int(unet_calls), 1)


def measure_ways(ways: Mapping[str, Callable[[], torch.Tensor]], *, seeds: int, repeats: int, device="cpu",
                 reference: str = "noisefast", tolerance: float | None = None, warmup: int = 0) -> dict:
    """noises/s of each way of scoring ``seeds`` seeds, and how their scores agree with ``reference``'s.

    Each ``ways[name]()`` scores all seeds and returns their [seeds] scores. One untimed call of each first (the
    warm-up, and the scores compared), then ``repeats`` round-robin timed calls of whole runs (CUDA events on a GPU,
    `time_round_robin`). Names starting with ``"diffusers"`` are baselines; ``ratio`` is ``reference`` against the
    strongest (fastest) of them, ``ratio_vs`` against each.
    """
    scores = {name: fn().double().cpu() for name, fn in ways.items()}
    ms = time_round_robin(ways, repeats, device=device, warmup=warmup)
    seconds = {name: summarize([t / 1e3 for t in ts]) for name, ts in ms.items()}
    rate = {name: seeds / s["median"] for name, s in seconds.items()}
    baselines = [name for name in ways if name.startswith("diffusers")]
    strongest = max(baselines, key=rate.__getitem__)
    diff = {name: float((s - scores[reference]).abs().max()) for name, s in scores.items() if name != reference}
    out = {
        "seconds": seconds,
        "noises_per_second": rate,
        "baselines": baselines,
        "strongest_baseline": strongest,
        "ratio": rate[reference] / rate[strongest],
        "ratio_vs": {name: rate[reference] / rate[name] for name in baselines},
        "score_diff_vs_" + reference: diff,
        "max_abs_score_diff": max((diff[b] for b in baselines), default=0.0),
    }
    if tolerance is not None:
        out["score_tolerance"] = tolerance
        out["scores_agree"] = all(d <= tolerance for d in diff.values())
    return out
