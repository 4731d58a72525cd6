"""Statistics of the quality study: bootstrap confidence intervals, win rates, rank correlation.

Values come grouped by class: an array ``[G, n]`` holds ``n`` samples for each of ``G`` classes.

- `mean_ci`: the mean over all samples with a 95 % percentile-bootstrap interval. With ``n ≥ 2`` the
  bootstrap resamples the ``n`` samples *within* each class (stratified: every class keeps its weight,
  the classes are the whole population, not a sample of it); with ``n == 1`` (one pick per class) it
  resamples the classes.
- `win_rate`: P(a > b) + ½·P(a = b) over every pair (a from A, b from B) of the same class, averaged
  over classes (the Mann–Whitney / "win rate with ties counted half" of preference studies); the
  interval resamples A and B independently within each class (over classes when ``n == 1``).
- `paired_win_rate`: the same for matched pairs (a_i vs b_i, e.g. one seed before and after
  optimisation); the interval resamples the pairs within each class.
- `spearman`: Spearman's ρ with its two-sided p-value (scipy); None for both when a sample is constant.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000


def _grouped(values, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
        raise ValueError(f"{name} must be [classes, samples] (or [classes]), got shape {v.shape}")
    return v


def _resample_index(rng: np.random.Generator, shape: tuple[int, int], resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """(class index, sample index), each [R, G, n]: stratified within class, or over classes when n == 1."""
    g, n = shape
    if n == 1:
        cls = rng.integers(0, g, size=(resamples, g, 1))
        return cls, np.zeros_like(cls)
    return np.broadcast_to(np.arange(g)[None, :, None], (resamples, g, n)), rng.integers(0, n, size=(resamples, g, n))


def _interval(stats: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(lo), float(hi)


def mean_ci(values, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """{"mean", "ci": [lo, hi], "n"} of ``values`` [G, n] (see the module docstring for the resampling)."""
    v = _grouped(values, "values")
    rng = np.random.default_rng(seed)
    ci, si = _resample_index(rng, v.shape, resamples)
    boot = v[ci, si].reshape(resamples, -1).mean(axis=1)
    return {"mean": float(v.mean()), "ci": list(_interval(boot)), "n": int(v.size)}


def _pair_wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per class (leading axes kept) the win rate of a [..., n] over b [..., m] across all n·m pairs."""
    d = a[..., :, None] - b[..., None, :]
    return ((d > 0) + 0.5 * (d == 0)).mean(axis=(-2, -1))


def win_rate(a, b, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """{"win_rate", "ci", "pairs"}: how often A beats B within a class, ties counted half."""
    a, b = _grouped(a, "a"), _grouped(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same number of classes, got shapes {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    if a.shape[1] == 1 and b.shape[1] == 1:  # one pick per class: resample the classes
        cls = rng.integers(0, a.shape[0], size=(resamples, a.shape[0]))
        boot = _pair_wins(a[cls], b[cls]).mean(axis=1)
    else:
        ai = rng.integers(0, a.shape[1], size=(resamples, *a.shape))
        bi = rng.integers(0, b.shape[1], size=(resamples, *b.shape))
        boot = _pair_wins(np.take_along_axis(a[None], ai, axis=2), np.take_along_axis(b[None], bi, axis=2)).mean(axis=1)
    return {"win_rate": float(_pair_wins(a, b).mean()), "ci": list(_interval(boot)), "pairs": int(a.shape[0] * a.shape[1] * b.shape[1])}


def paired_win_rate(after, before, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """{"win_rate", "ci", "pairs"}: how often ``after`` [G, n] beats the matched ``before`` [G, n], ties half."""
    a, b = _grouped(after, "after"), _grouped(before, "before")
    if a.shape != b.shape:
        raise ValueError(f"after and before must be matched pairs of one shape, got {a.shape} and {b.shape}")
    wins = (a > b) + 0.5 * (a == b)  # [G, n]
    out = mean_ci(wins, resamples=resamples, seed=seed)
    return {"win_rate": out["mean"], "ci": out["ci"], "pairs": out["n"]}


def spearman(x, y) -> dict:
    """{"rho", "p", "n"}: Spearman's rank correlation of two flat samples (rho, p None if one is constant)."""
    from scipy.stats import spearmanr

    x, y = np.ravel(np.asarray(x, dtype=np.float64)), np.ravel(np.asarray(y, dtype=np.float64))
    if x.shape != y.shape or x.size < 3:
        raise ValueError(f"spearman needs two samples of one size ≥ 3, got {x.shape} and {y.shape}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # a constant sample has no ranks to correlate
        return {"rho": None, "p": None, "n": int(x.size)}
    r = spearmanr(x, y)
    return {"rho": float(r.statistic), "p": float(r.pvalue), "n": int(x.size)}
