"""The one way rows are packed: several prompts in shared UNet batches give the scores of separate calls."""

import pytest
import torch

from noisefast.batching import RowScorer, ScoreJob, bucket_sizes, score_stream
from noisefast.schedule import DDIMSchedule
from noisefast.selection import select_many
from noisefast.testing import tiny_condition

SCHED = DDIMSchedule.from_config({"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                  "beta_end": 0.012, "steps_offset": 1}, 2, 2)  # fmt: skip
SHAPE = (4, 8, 8)


class CountingDenoiser:
    """Records the batch size of every UNet call."""

    def __init__(self, den):
        self.den, self.batches = den, []
        self.in_channels, self.sample_size = den.in_channels, den.sample_size

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        return self.den(x, t, cond)


def scorer(den, guidance=5.5):
    return RowScorer(den, SCHED, shape=SHAPE, guidance_scale=guidance, inversion_guidance_scale=1.0,
                     dtype=torch.float32, device="cpu")  # fmt: skip


def test_three_prompts_in_shared_batches_equal_three_separate_calls(tiny_denoiser):
    conds = [tiny_condition(seed=i) for i in range(3)]
    seeds = list(range(8))
    separate_den = CountingDenoiser(tiny_denoiser)
    separate = [select_many(scorer(separate_den), [ScoreJob(i, c, seeds)], 8)[0] for i, c in enumerate(conds)]
    shared_den = CountingDenoiser(tiny_denoiser)
    shared = select_many(scorer(shared_den), [ScoreJob(i, c, seeds) for i, c in enumerate(conds)], 12)
    for a, b in zip(separate, shared):
        by_a = dict(zip(a.seeds, a.scores.tolist()))
        by_b = dict(zip(b.seeds, b.scores.tolist()))
        # rows are independent; other batch shapes may pick other GEMM blockings, so rounding differs: per move
        # ≤ (1 + |w|)·√D·ε₃₂ relative to |x| ~ 1, over 4 moves (error model, not a fitted number)
        tol = (1 + 5.5) * 4 * (8 * 8 * 4) ** 0.5 * torch.finfo(torch.float32).eps
        assert by_a == pytest.approx(by_b, abs=tol)
    # 24 rows: 3 calls of 8 rows per move separately, 2 calls of 12 rows shared (CFG doubles each)
    assert len(shared_den.batches) < len(separate_den.batches)
    assert max(shared_den.batches) > max(separate_den.batches)
    assert sum(shared_den.batches) == sum(separate_den.batches)


def test_stream_is_lazy_ordered_and_splits_jobs_across_batches(tiny_denoiser):
    pulled = []

    def jobs():
        for i in range(3):
            pulled.append(i)
            yield ScoreJob(f"p{i}", tiny_condition(seed=i), [10 * i, 10 * i + 1, 10 * i + 2])

    stream = score_stream(scorer(tiny_denoiser, guidance=0.0), jobs(), 4)
    first = next(stream)
    assert pulled == [0, 1]  # only as many jobs as the first batch needs
    parts = [first, *stream]
    assert [(p.key, p.seeds) for p in parts] == [("p0", (0, 1, 2)), ("p1", (10,)), ("p1", (11, 12)), ("p2", (20, 21)), ("p2", (22,))]
    assert all(p.scores.dtype == torch.float32 and p.scores.shape == (len(p.seeds),) for p in parts)


def test_buckets_pad_the_last_batch_and_drop_the_padding(tiny_denoiser):
    den = CountingDenoiser(tiny_denoiser)
    sc = scorer(den, guidance=0.0)
    sc.buckets = bucket_sizes(8)
    job = ScoreJob(0, tiny_condition(), list(range(11)))
    parts = list(score_stream(sc, [job], 8))
    assert [len(p.seeds) for p in parts] == [8, 3]
    assert set(den.batches) == {8, 4}  # the 3-row batch ran as the 4-row bucket
    plain = torch.cat([p.scores for p in score_stream(scorer(tiny_denoiser, 0.0), [job], 8)])
    tol = 4 * (8 * 8 * 4) ** 0.5 * torch.finfo(torch.float32).eps  # as above, no guidance amplification
    torch.testing.assert_close(torch.cat([p.scores for p in parts]), plain, atol=tol, rtol=0)
    assert bucket_sizes(8) == (1, 2, 4, 8) and bucket_sizes(6) == (1, 2, 4, 6) and bucket_sizes(1) == (1,)
