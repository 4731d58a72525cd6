"""Summaries of timing samples (no torch: `compare` and the tables use them on saved results).

    summarize(samples) = {"median", "min", "q1", "q3", "max", "n"}     quartiles: inclusive method
    spread_pct(s)      = 100 · (q3 − q1) / median                      how far one number can be trusted
    headline(s, stat)  = s["min"] (best of N: CPU) or s["median"] (GPU)

Best of N on a CPU: preemption, frequency changes and other processes only ever *add* time to a call, so the
fastest of N alternated rounds is the least disturbed estimate of each variant. On a GPU each sample is device
time between two CUDA events, which the host's load barely touches; there the median is the estimate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

STATISTICS = ("min", "median")


def summarize(samples: Sequence[float]) -> dict:
    """{"median", "min", "q1", "q3", "max", "n"} of ``samples`` (n < 2: the quartiles are the one value)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("summarize needs at least one sample")
    q1, q3 = statistics.quantiles(xs, n=4, method="inclusive")[::2] if len(xs) > 1 else (xs[0], xs[0])
    return {"median": statistics.median(xs), "min": xs[0], "q1": q1, "q3": q3, "max": xs[-1], "n": len(xs)}


def spread_pct(summary: Mapping) -> float:
    """Interquartile range relative to the median, in percent (NaN for a zero median)."""
    return 100.0 * (summary["q3"] - summary["q1"]) / summary["median"] if summary["median"] else float("nan")


def headline(summary: Mapping, statistic: str) -> float:
    """The number a result reports for ``summary``: its ``min`` (best of N) or its ``median``."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    return float(summary[statistic])


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``xs``, linear interpolation between closest ranks (numpy's default)."""
    s = sorted(float(x) for x in xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def geomean(xs: Sequence[float]) -> float:
    xs = [float(x) for x in xs]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs and all(x > 0 for x in xs) else float("nan")
