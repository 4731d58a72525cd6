"""The one way rows are packed into UNet batches — used by ``select``, the screening job and the server.

A *row* is one (prompt condition, seed) pair: the noise diffusers draws for the seed, scored under that
prompt. Rows of *different* prompts that share the group settings (schedule, latent shape, guidance,
dtype, device) go through the UNet together: the packed batch carries one condition row per noise, so
``[row₀ … row_{B−1}]`` costs one UNet call per DDIM move whatever prompts the rows came from. Each
row's score depends on its own noise and condition only (the UNet treats batch rows independently).

    scorer = RowScorer(den, sched, shape=(4, 64, 64), guidance_scale=5.5, inversion_guidance_scale=1.0,
                       dtype=torch.float16, device="cuda")
    for part in score_stream(scorer, jobs, batch_size=32):   # jobs: Iterable[ScoreJob], consumed lazily
        part.key, part.seeds, part.scores                     # as each batch finishes, in row order

Memory is bounded by one batch: ``jobs`` may be a generator over millions of (prompt, seeds) pairs.

Batch-size buckets: a shape-specialised backend (``torch.compile``, TensorRT) recompiles or refuses for
every new batch size. With ``buckets=(1, 2, 4, 8, …)`` a short last batch is padded up to the smallest
bucket that holds it (by repeating its last row) and the padding's scores are dropped, so the backend
sees only those sizes. `bucket_sizes` gives the default policy: powers of two up to the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from noisefast.denoisers.base import Condition, Denoiser
from noisefast.progress import ProgressFn
from noisefast.flow_schedule import Schedule
from noisefast.seeds import noise_from_seeds
from noisefast.stability import stability_score
from noisefast.transform import denoise


@dataclass(frozen=True, eq=False)
class ScoreJob:
    """Noises to score under one prompt's condition — each seed's, or the rows of ``latents`` [K, C, H, W]
    (then ``seeds`` only numbers them); ``key`` is the caller's name for the job (prompt id, request)."""

    key: Hashable
    cond: Condition  # batch 1
    seeds: Sequence[int]
    latents: torch.Tensor | None = None  # [len(seeds), C, H, W]: given noise instead of the seeds' draws


@dataclass(frozen=True, eq=False)
class Row:
    """One noise: ``seed``'s draw (or the given ``latents`` [1, C, H, W]) under ``cond`` (batch 1), for the job
    ``job`` (its position)."""

    job: int
    key: Hashable
    cond: Condition
    seed: int
    latents: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class ScoredRows:
    """Consecutive finished rows of one job: ``scores[i]`` is s(ε) of ``seeds[i]``'s noise."""

    key: Hashable
    seeds: tuple[int, ...]
    scores: torch.Tensor  # [n] float32, CPU


def bucket_sizes(batch_size: int) -> tuple[int, ...]:
    """Powers of two below ``batch_size``, then ``batch_size`` itself: (1, 2, 4, 8) for 8, (1, 2, 4, 6) for 6."""
    sizes, b = [], 1
    while b < batch_size:
        sizes.append(b)
        b *= 2
    return (*sizes, batch_size)


class RowScorer:
    """Scores packed batches of rows that share a schedule, a latent shape and the guidance scales."""

    def __init__(
        self,
        den: Denoiser,
        sched: Schedule,
        *,
        shape: tuple[int, ...],  # per-sample latent shape (C, H, W)
        guidance_scale: float,
        inversion_guidance_scale: float,
        dtype: torch.dtype,
        device,
        generator_device="cpu",
        buckets: Sequence[int] | None = None,
        chain: Callable[[torch.Tensor, Condition], torch.Tensor] | None = None,
        draw: Callable[[Sequence[int]], torch.Tensor] | None = None,
    ):
        self.den, self.sched, self.shape = den, sched, tuple(shape)
        self.guidance_scale, self.inversion_guidance_scale = guidance_scale, inversion_guidance_scale
        self.dtype, self.device, self.generator_device = dtype, torch.device(device), generator_device
        self.buckets = tuple(sorted(buckets)) if buckets else None
        # chain(noise [B, *shape], cond batch B) → scores [B]: replaces the eager stability_score (a CUDA-graph
        # replay, `noisefast.graphs`); draw(seeds) → noise: replaces noise_from_seeds (pinned buffers)
        self.chain, self.draw = chain, draw

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:  # [K, *shape]
        """What diffusers draws for each seed (see `noisefast.seeds`), on the scorer's device and dtype."""
        if self.draw is not None:
            return self.draw(seeds)
        return noise_from_seeds(seeds, self.shape, self.generator_device, dtype=self.dtype, device=self.device)

    def pack(self, rows: Sequence[Row]) -> tuple[torch.Tensor, Condition]:  # noise [B, *shape], cond batch B
        """The batch's noise and its per-row condition (consecutive rows of a job share one expanded segment)."""
        segments, start = [], 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i].job != rows[start].job:
                segments.append(rows[start].cond.expand(i - start))
                start = i
        if all(r.latents is None for r in rows):
            noise = self.noise([r.seed for r in rows])
        else:
            noise = torch.cat([self.noise([r.seed]) if r.latents is None else r.latents for r in rows])
            noise = noise.to(device=self.device, dtype=self.dtype)
        return noise, Condition.concat(segments)

    def _padded(self, rows: Sequence[Row]) -> list[Row]:
        """``rows`` padded (repeating the last) up to the smallest bucket that holds them, when ``buckets`` is set."""
        rows = list(rows)
        if self.buckets is not None:
            size = next((b for b in self.buckets if b >= len(rows)), len(rows))
            rows += [rows[-1]] * (size - len(rows))
        return rows

    def __call__(self, rows: Sequence[Row]) -> torch.Tensor:  # [len(rows)] float32 CPU
        """s(ε) of every row, in order; padded up to a bucket size when ``buckets`` is set."""
        n = len(rows)
        noise, cond = self.pack(self._padded(rows))
        if self.chain is not None:
            return self.chain(noise, cond)[:n].float().cpu()
        with torch.inference_mode():
            scores = stability_score(self.den, self.sched, noise, cond, self.guidance_scale, self.inversion_guidance_scale)
        return scores[:n].float().cpu()

    def denoise(self, rows: Sequence[Row], on_move=None) -> tuple[torch.Tensor, torch.Tensor]:  # (ε, x₀), each [len(rows), *shape]
        """D(ε) of every row (generation): the same packing and buckets as scoring, the denoising moves only;
        ``on_move()`` after each denoising step."""
        n = len(rows)
        noise, cond = self.pack(self._padded(rows))
        with torch.inference_mode():
            x0 = denoise(self.den, self.sched, noise, cond, self.guidance_scale, on_move=on_move)
        return noise[:n], x0[:n]


def split_scores(rows: Sequence[Row], scores: torch.Tensor) -> list[ScoredRows]:
    """Cut one batch's scores [len(rows)] back into consecutive per-job parts."""
    parts, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i].job != rows[start].job:
            seeds = tuple(r.seed for r in rows[start:i])
            parts.append(ScoredRows(rows[start].key, seeds, scores[start:i]))
            start = i
    return parts


def score_stream(
    scorer: RowScorer,
    jobs: Iterable[ScoreJob],
    batch_size: int,
    *,
    progress: ProgressFn | None = None,
) -> Iterator[ScoredRows]:
    """Score every job's seeds, packing rows of consecutive jobs into batches of ``batch_size``.

    Yields each batch's per-job parts as soon as it finishes, in row order (a job's seeds may arrive in
    several parts). ``jobs`` is read lazily; ``progress(rows_done, rows_total or None)`` after each batch.
    """
    total = sum(len(j.seeds) for j in jobs) if isinstance(jobs, Sequence) else None
    done = 0
    for batch in row_batches(jobs, batch_size):
        yield from split_scores(batch, scorer(batch))
        done += len(batch)
        if progress is not None:
            progress(done, total)


def row_batches(jobs: Iterable[ScoreJob], batch_size: int) -> Iterator[list[Row]]:
    """The jobs' rows, in order, cut into batches of ``batch_size`` (the last may be short); ``jobs`` read lazily."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    buf: list[Row] = []
    for j, job in enumerate(jobs):
        if job.cond.batch_size != 1:
            raise ValueError(f"job {job.key!r}: its condition must have batch 1, got {job.cond.batch_size}")
        if job.latents is not None and len(job.latents) != len(job.seeds):
            raise ValueError(f"job {job.key!r}: {len(job.latents)} latents for {len(job.seeds)} seeds")
        for i, seed in enumerate(job.seeds):
            buf.append(Row(j, job.key, job.cond, seed, None if job.latents is None else job.latents[i : i + 1]))
            if len(buf) == batch_size:
                yield buf
                buf = []
    if buf:
        yield buf


__all__ = ["Row", "RowScorer", "ScoreJob", "ScoredRows", "bucket_sizes", "row_batches", "score_stream", "split_scores"]
