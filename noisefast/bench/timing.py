"""The timing policy of every ``noisefast bench`` measurement, per device.

  * warm-up calls of every variant first (untimed): allocator, autotuning, lazy initialisation, caches;
  * the variants are timed round-robin (A, B, C, A, B, C, ...), the baseline in the same rounds as noisefast,
    so that drift in the machine's load hits all of them alike;
  * CPU: ``time.perf_counter`` around each call; the reported statistic is the best of the N rounds
    (`noisefast.bench.stats`: load only ever adds time);
  * CUDA: a pair of CUDA events on the current stream around each call, synchronised on the end event, so each
    sample is the device time of that call alone; the reported statistic is the median.
Every sample is kept (the results schema stores them all), with the summary next to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch


def device_type(device) -> str:
    return torch.device(device).type


def statistic_for(device) -> str:
    """``"median"`` for CUDA event timings, ``"min"`` (best of N) for wall-clock timings."""
    return "median" if device_type(device) == "cuda" else "min"


def method_for(device) -> str:
    """One line saying how samples on ``device`` were taken (recorded in every result)."""
    if device_type(device) == "cuda":
        return "CUDA events around each call after warm-up, variants alternated; median of the rounds"
    return "time.perf_counter around each call after warm-up, variants alternated round-robin; best of the rounds"


def sync(device) -> None:
    """Wait for queued work on ``device`` (no-op off CUDA)."""
    if device_type(device) == "cuda":
        torch.cuda.synchronize(device)


def _timed_s(fn: Callable[[], object], cuda: bool) -> float:
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_round_robin(fns: Mapping[str, Callable[[], object]], rounds: int, *, device="cpu",
                     warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each ``fns[name]()`` per round: ``warmup`` untimed calls of each, then ``rounds`` alternated rounds."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    cuda = device_type(device) == "cuda"
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_timed_s(fn, cuda))
    return times


def time_calls(fn: Callable[[], object], calls: int, *, device="cpu", warmup: int = 1) -> list[float]:
    """Seconds of ``calls`` calls of ``fn()`` after ``warmup`` untimed ones."""
    return time_round_robin({"fn": fn}, calls, device=device, warmup=warmup)["fn"]


def time_wall_s(fn: Callable[[], object], *, device="cpu") -> tuple[float, object]:
    """(seconds, result) of one call of ``fn()``, synchronised before and after (a whole multi-launch run)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out
