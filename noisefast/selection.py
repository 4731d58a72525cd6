"""Noise selection (Algorithm 1): score the noise of every candidate seed, keep the most stable.

The candidates are drawn from seeds (`noise_from_seeds`, identical to what diffusers draws) and scored
through `noisefast.batching.score_stream` — the same row packing the screening job and the server use —
so several prompts' candidates share UNet batches (`select_many`). Every seed comes back with its
score, sorted from most to least stable.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch

from noisefast.batching import RowScorer, ScoreJob, score_stream
from noisefast.defaults import DEFAULT_BATCH_SIZE, DEFAULT_GUIDANCE_SCALE, DEFAULT_INVERSION_GUIDANCE_SCALE, DEFAULT_NUM_CANDIDATES
from noisefast.denoisers.base import Condition, Denoiser
from noisefast.denoisers.guidance import check_guidance_scale
from noisefast.errors import Interrupted
from noisefast.progress import ProgressFn
from noisefast.flow_schedule import Schedule
from noisefast.seeds import check_latent_shape, check_seeds
from noisefast.transform import check_max_batch


@dataclass(frozen=True, eq=False)
class Selection:
    """Seeds and stability scores, sorted from most to least stable (ties keep seed order, NaN last).

    ``best_latents`` is the best seed's initial noise, [1, C, H, W]: what diffusers draws for that seed, so
    ``pipe(prompt, latents=sel.best_latents, ...)`` reproduces the sample in a stock pipeline (None when the
    selection was ranked from stored scores, e.g. the server's seed bank).
    """

    seeds: tuple[int, ...]  # sorted by score, descending
    scores: torch.Tensor  # [K] float, on CPU, descending (NaN scores sort last)
    best_latents: torch.Tensor | None = None  # [1, C, H, W] the noise of best_seed
    worst_latents: torch.Tensor | None = None  # [1, C, H, W] the noise of worst_seed
    complete: bool = True  # False for the partial result of an interrupted selection
    total: int | None = None  # how many seeds were asked for

    @classmethod
    def rank(cls, seeds: Sequence[int], scores: torch.Tensor, *, draw=None, total: int | None = None) -> "Selection":
        """Sort ``seeds`` by ``scores`` [K] (descending, stable, NaN last); ``draw(seeds)`` → their noise gives
        ``best_latents``/``worst_latents``. The one ordering select, the CLI and the server answer with."""
        scores = torch.as_tensor(scores, dtype=torch.float32).cpu()
        order = torch.sort(scores.nan_to_num(nan=-torch.inf), descending=True, stable=True).indices.tolist()
        ranked = tuple(int(seeds[i]) for i in order)
        total = len(seeds) if total is None else total
        best, worst = (draw([ranked[0]]), draw([ranked[-1]])) if draw is not None else (None, None)
        return cls(ranked, scores[order], best, worst, complete=len(ranked) == total, total=total)

    @property
    def best_noise(self) -> torch.Tensor | None:  # the name before 0.2: best_latents
        return self.best_latents

    @property
    def worst_noise(self) -> torch.Tensor | None:
        return self.worst_latents

    @property
    def best_seed(self) -> int:
        return self.seeds[0]

    @property
    def worst_seed(self) -> int:
        return self.seeds[-1]

    @property
    def best_score(self) -> float:
        return float(self.scores[0])

    @property
    def worst_score(self) -> float:
        return float(self.scores[-1])

    def top(self, n: int) -> tuple[int, ...]:
        """The ``n`` most stable seeds."""
        return self.seeds[:n]

    def score_of(self, seed: int) -> float:
        return float(self.scores[self.seeds.index(seed)])

    def as_dict(self) -> dict:
        """The select answer (CLI report, ``POST /v1/select``): seeds and scores most → least stable, best and
        worst, counts. A non-finite score is None (strict JSON)."""
        scores = [v if math.isfinite(v) else None for v in self.scores.tolist()]
        return {
            "seeds": list(self.seeds),
            "scores": scores,
            "best_seed": self.best_seed,
            "best_score": scores[0],
            "worst_seed": self.worst_seed,
            "worst_score": scores[-1],
            "complete": self.complete,
            "scored": len(self.seeds),
            "requested": self.total if self.total is not None else len(self.seeds),
        }


class SelectionInterrupted(Interrupted):
    """Ctrl-C during a selection; ``.result`` is the `Selection` over the rows that finished (or None), or for
    several prompts the list of them."""

    def __init__(self, result):
        sels = result if isinstance(result, list) else [result]
        done = sum(len(s.seeds) for s in sels if s is not None)
        super().__init__(f"noise selection interrupted after {done} scored rows", result)


def select_noise(
    den: Denoiser,
    sched: Schedule,
    cond: Condition,  # batch 1: one prompt for every candidate
    seeds: Iterable[int] | None = None,
    k: int | None = None,
    shape=None,  # per-sample latent shape (C, H, W); default (den.in_channels, den.sample_size, den.sample_size)
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    inversion_guidance_scale: float = DEFAULT_INVERSION_GUIDANCE_SCALE,
    *,
    generator_device="cpu",
    dtype: torch.dtype | None = None,
    device=None,
    max_batch: int | None = None,
    progress: ProgressFn | None = None,
) -> Selection:
    """Algorithm 1: score the noise of every seed (or of seeds ``0 … k−1``), sort by stability.

    ``dtype``/``device`` of the noise default to the condition's ``prompt_embeds`` — what the diffusers
    pipeline draws in — so the best seed reproduces there. Candidates go ``max_batch`` at a time (default
    ``DEFAULT_BATCH_SIZE``); ``progress(done, total)`` is called after each batch. On Ctrl-C the finished
    rows are not lost: `SelectionInterrupted` (a ``KeyboardInterrupt``) carries them in ``.result``.
    """
    if seeds is not None and k is not None:
        raise ValueError("pass seeds or k, not both")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive int, got {k!r}")
    seeds = check_seeds(range(k or DEFAULT_NUM_CANDIDATES) if seeds is None else seeds)
    if not isinstance(cond, Condition):
        raise TypeError(f"cond must be a noisefast Condition, got {type(cond).__name__}")
    if cond.batch_size != 1:
        raise ValueError(f"select_noise scores many seeds for one prompt: cond must have batch 1, got {cond.batch_size}")
    scorer = RowScorer(
        den, sched, shape=check_latent_shape(_default_shape(den) if shape is None else shape),
        guidance_scale=check_guidance_scale(guidance_scale),
        inversion_guidance_scale=check_guidance_scale(inversion_guidance_scale, "inversion_guidance_scale"),
        dtype=cond.prompt_embeds.dtype if dtype is None else dtype,
        device=cond.prompt_embeds.device if device is None else device, generator_device=generator_device,
    )  # fmt: skip
    batch = check_max_batch(max_batch) or DEFAULT_BATCH_SIZE
    return select_one(scorer, ScoreJob(0, cond, seeds), batch, progress=progress)


def select_one(scorer: RowScorer, job: ScoreJob, batch_size: int, *, progress: ProgressFn | None = None) -> Selection:
    """Algorithm 1 for one job; Ctrl-C raises `SelectionInterrupted` whose ``.result`` is its partial `Selection`."""
    try:
        return select_many(scorer, [job], batch_size, progress=progress)[0]
    except SelectionInterrupted as e:
        raise SelectionInterrupted(e.result[0]) from e.__cause__


def select_many(
    scorer: RowScorer,
    jobs: Sequence[ScoreJob],
    batch_size: int,
    *,
    progress: ProgressFn | None = None,
) -> list[Selection]:
    """Algorithm 1 for several prompts at once: their candidates share UNet batches; one `Selection` per job.

    On Ctrl-C, `SelectionInterrupted.result` is the list of the jobs' partial selections (None for a job
    with no finished row; `select_one` unwraps it for one job).
    """
    found: dict[Hashable, tuple[list[int], list[torch.Tensor]]] = {}
    index = {job.key: i for i, job in enumerate(jobs)}
    if len(index) != len(jobs):
        raise ValueError("select_many: job keys must be distinct")
    try:
        for part in score_stream(scorer, jobs, batch_size, progress=progress):
            seeds, scores = found.setdefault(part.key, ([], []))
            seeds += part.seeds
            scores.append(part.scores)
    except KeyboardInterrupt as e:
        partial = [_selection(scorer, job, *found[job.key]) if job.key in found else None for job in jobs]
        raise SelectionInterrupted(partial) from e
    return [_selection(scorer, job, *found[job.key]) for job in jobs]


def _default_shape(den) -> tuple[int, int, int]:
    channels, size = getattr(den, "in_channels", None), getattr(den, "sample_size", None)
    if channels is None or size is None:
        raise ValueError("shape is required: the denoiser has no in_channels/sample_size to default from")
    h, w = (size, size) if isinstance(size, int) else size
    return (channels, h, w)


def _selection(scorer: RowScorer, job: ScoreJob, seeds: list[int], scores: list[torch.Tensor]) -> Selection:
    """`Selection.rank` of one job's finished rows; the best and worst noise redrawn by the scorer."""
    return Selection.rank(seeds, torch.cat(scores), draw=scorer.noise, total=len(job.seeds))


__all__ = ["Selection", "SelectionInterrupted", "select_many", "select_noise", "select_one"]
