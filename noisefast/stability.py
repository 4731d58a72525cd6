"""Inversion stability (Definition 1) and noise selection (Algorithm 1).

    s(ε) = cos(vec(ε), vec(F(ε))),   F = I∘D   (one score per sample, cosine over the flattened latent)

Selection draws the candidates from seeds (`noise_from_seeds`, identical to what diffusers draws), scores
them chunk by chunk and returns every seed with its score, sorted from most to least stable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from noisefast import ops
from noisefast.denoisers.base import Condition, Denoiser
from noisefast.schedule import DDIMSchedule
from noisefast.seeds import check_latent_shape, check_seeds, noise_from_seeds
from noisefast.transform import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INVERSION_GUIDANCE_SCALE,
    check_max_batch,
    transform,
)

DEFAULT_NUM_CANDIDATES = 100  # the paper's K
DEFAULT_SELECTION_BATCH = 8  # candidates per chunk in select_noise when max_batch is None


def stability_score(
    den: Denoiser,
    sched: DDIMSchedule,
    noise: torch.Tensor,  # [B, C, H, W] ε
    cond: Condition,  # batch B or 1
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    inversion_guidance_scale: float = DEFAULT_INVERSION_GUIDANCE_SCALE,
    *,
    max_batch: int | None = None,
    checkpoint: bool = False,
) -> torch.Tensor:  # [B] s(ε), float32 (float64 for float64 noise)
    """Definition 1: s(ε) = cos(ε, F(ε)) per sample; differentiable in ``noise`` when it requires grad.

    16-bit latents are compared in float32 (a sum of squares over a 4×128×128 latent overflows fp16).
    """
    back = transform(
        den, sched, noise, cond, guidance_scale, inversion_guidance_scale, max_batch=max_batch, checkpoint=checkpoint
    )
    if noise.dtype in (torch.float16, torch.bfloat16):
        return ops.cosine_similarity(noise.float(), back.float())
    return ops.cosine_similarity(noise, back)


@dataclass(frozen=True, eq=False)
class Selection:
    """Seeds and stability scores, sorted from most to least stable (ties keep seed order)."""

    seeds: tuple[int, ...]  # sorted by score, descending
    scores: torch.Tensor  # [K] float, on CPU, descending (NaN scores sort last)
    best_noise: torch.Tensor  # [1, C, H, W] the noise of best_seed
    worst_noise: torch.Tensor  # [1, C, H, W] the noise of worst_seed
    complete: bool = True  # False for the partial result of an interrupted selection
    total: int | None = None  # how many seeds were asked for

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
        """JSON-ready summary: every seed with its score, best and worst."""
        return {
            "seeds": list(self.seeds),
            "scores": [float(s) for s in self.scores],
            "best_seed": self.best_seed,
            "best_score": self.best_score,
            "worst_seed": self.worst_seed,
            "worst_score": self.worst_score,
            "complete": self.complete,
            "total": self.total if self.total is not None else len(self.seeds),
        }


class SelectionInterrupted(KeyboardInterrupt):
    """Ctrl-C during `select_noise`; ``.result`` is the `Selection` over the chunks that finished (or None)."""

    def __init__(self, result: Selection | None):
        done = 0 if result is None else len(result.seeds)
        super().__init__(f"noise selection interrupted after {done} scored seeds")
        self.result = result


def select_noise(
    den: Denoiser,
    sched: DDIMSchedule,
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
    progress: Callable[[int, int], None] | None = None,
) -> Selection:
    """Algorithm 1: score the noise of every seed (or of seeds ``0 … k−1``), sort by stability.

    ``dtype``/``device`` of the noise default to the condition's ``prompt_embeds`` — what the diffusers
    pipeline draws in — so the best seed reproduces there. Candidates go ``max_batch`` at a time (default
    ``DEFAULT_SELECTION_BATCH``); ``progress(done, total)`` is called after each chunk. On Ctrl-C the
    finished chunks are not lost: `SelectionInterrupted` (a ``KeyboardInterrupt``) carries them in ``.result``.
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
    shape = check_latent_shape(_default_shape(den) if shape is None else shape)
    dtype = cond.prompt_embeds.dtype if dtype is None else dtype
    device = cond.prompt_embeds.device if device is None else device
    step = check_max_batch(max_batch) or DEFAULT_SELECTION_BATCH

    scores = []  # [chunk] float32 CPU scores in seed order
    draw = dict(shape=shape, generator_device=generator_device, dtype=dtype, device=device)
    try:
        for lo in range(0, len(seeds), step):
            noise = noise_from_seeds(seeds[lo : lo + step], **draw)
            with torch.inference_mode():
                s = stability_score(den, sched, noise, cond, guidance_scale, inversion_guidance_scale)
            scores.append(s.float().cpu())
            if progress is not None:
                progress(min(lo + step, len(seeds)), len(seeds))
    except KeyboardInterrupt as e:
        raise SelectionInterrupted(_selection(seeds, scores, draw) if scores else None) from e
    return _selection(seeds, scores, draw)


def _default_shape(den) -> tuple[int, int, int]:
    channels, size = getattr(den, "in_channels", None), getattr(den, "sample_size", None)
    if channels is None or size is None:
        raise ValueError("shape is required: the denoiser has no in_channels/sample_size to default from")
    h, w = (size, size) if isinstance(size, int) else size
    return (channels, h, w)


def _selection(seeds: list[int], scores: list[torch.Tensor], draw: dict) -> Selection:
    """Sort the scored seeds (descending, stable, NaN last); redraw the best and worst noise."""
    s = torch.cat(scores)  # [n] in seed order
    done = seeds[: s.numel()]
    order = torch.sort(s.nan_to_num(nan=-torch.inf), descending=True, stable=True).indices.tolist()
    sorted_seeds = tuple(done[i] for i in order)
    return Selection(
        seeds=sorted_seeds,
        scores=s[order],
        best_noise=noise_from_seeds([sorted_seeds[0]], **draw),
        worst_noise=noise_from_seeds([sorted_seeds[-1]], **draw),
        complete=len(done) == len(seeds),
        total=len(seeds),
    )
