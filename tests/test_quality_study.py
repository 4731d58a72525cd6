"""The quality study (bench/quality/study.py): its statistics, and one end-to-end run on a tiny pool.

The end-to-end run scores 4 seeds per digit at 2+2 DDIM steps, optimises one seed per digit for one
iteration, and checks the report's invariants (the most stable pick is the most stable, the shell
variant stays on ‖ε‖ = √D, every probability is a probability) — a few seconds on a CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

# bench/quality is a folder of scripts, not a package: load its modules by path like test_builtin does
from test_builtin import _bench_module


@pytest.fixture(scope="module")
def st():
    return _bench_module("study_stats")


def test_win_rate_counts_ties_half_and_matches_pair_counting(st):
    a = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])  # [G=2, n=3]
    b = np.array([[2.0, 2.0], [0.0, 1.0]])  # [G=2, m=2]
    # class 0: pairs (1,2)(1,2)(2,2)(2,2)(3,2)(3,2) → 0+0+.5+.5+1+1 = 3/6; class 1: ties 3×.5, losses 3×0 → 1.5/6
    out = st.win_rate(a, b, resamples=200)
    assert out["win_rate"] == pytest.approx((3 / 6 + 1.5 / 6) / 2)
    assert out["pairs"] == 12
    assert out["ci"][0] <= out["win_rate"] <= out["ci"][1]
    assert st.win_rate(a, a, resamples=50)["win_rate"] == pytest.approx(0.5)


def test_bootstrap_is_stratified_within_classes_and_over_classes_for_single_picks(st):
    per_class_constant = np.repeat(np.arange(5.0)[:, None], 4, axis=1)  # [5, 4]: no spread inside a class
    out = st.mean_ci(per_class_constant, resamples=300)
    assert out["mean"] == pytest.approx(2.0) and out["ci"] == pytest.approx([2.0, 2.0])  # classes keep their weight
    single = st.mean_ci(np.arange(5.0), resamples=300)  # one pick per class: the classes are resampled
    assert single["ci"][0] < 2.0 < single["ci"][1]


def test_paired_win_rate_and_bad_shapes(st):
    before = np.zeros((2, 3))
    after = np.array([[1.0, 0.0, -1.0], [1.0, 1.0, 1.0]])
    assert st.paired_win_rate(after, before, resamples=50)["win_rate"] == pytest.approx((1 + 0.5 + 0 + 3) / 6)
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 2\)"):
        st.paired_win_rate(after, before[:, :2])
    with pytest.raises(ValueError, match="same number of classes"):
        st.win_rate(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="size ≥ 3"):
        st.spearman([1.0, 2.0], [1.0, 2.0])


def test_study_end_to_end_on_a_tiny_pool(tmp_path):
    study = _bench_module("study")
    out = tmp_path / "study.json"
    report = study.main([
        "--k", "4", "--n", "2", "--settings", "2:1", "--opt-setting", "2:1", "--opt-seeds", "1",
        "--opt-iterations", "1", "--paper-iterations", "1", "--lrs", "3", "--resamples", "50",
        "--threads", str(torch.get_num_threads()), "--out", str(out),
    ])  # fmt: skip
    assert json.loads(out.read_text())["selection"][0]["k"] == 4
    assert out.with_suffix(".md").read_text().startswith("## Quality study")
    sel = report["selection"][0]
    stab = np.array(sel["stability"])  # [10, 4]
    assert stab.shape == (10, 4) and np.isfinite(stab).all()
    groups = sel["summary"]["groups"]
    assert groups["best"]["stability"]["mean"] == pytest.approx(stab.max(axis=1).mean(), abs=1e-4)
    assert groups["worst"]["stability"]["mean"] == pytest.approx(stab.min(axis=1).mean(), abs=1e-4)
    assert groups["top2"]["stability"]["mean"] >= groups["bottom2"]["stability"]["mean"]
    conf = np.array(sel["confidence"])
    assert ((conf >= 0) & (conf <= 1)).all()
    opt = report["optimization"]
    paper, shell = opt["variants"]
    assert paper["lr"] == pytest.approx(100 * 64 / (4 * 128 * 128))
    assert shell["lr"] == 3 and shell["norm_over_sqrt_d"]["mean"] == pytest.approx(1.0, abs=1e-4)
    # one update of Algorithm 2 raised the stability of most noises (the gradient step is a descent step)
    assert shell["stability_win_rate"]["win_rate"] > 0.5
