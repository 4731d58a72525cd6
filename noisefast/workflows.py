"""The use cases, as plain functions over an `Engine`: what the command line, the server and the screening
job run. Each returns a report dataclass with one ``as_dict()`` schema (strict-JSON-ready; images are
kept as PIL objects for the front end to write or encode).

- `score_prompts`: s(ε) of every seed under every prompt (rows of all prompts share UNet batches);
- `select_prompts`: Algorithm 1 per prompt, plus the samples of the most and least stable seeds;
- `optimize_seeds`: Algorithm 2, then the stability before/after measured afresh and both samples;
- `generate_seeds`: D(ε) per seed, decoded.

Ctrl-C never loses finished work: each function returns what finished with ``complete=False`` instead of
raising (the caller decides the exit code).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from noisefast.engine_results import Optimization
from noisefast.pipeline import Engine
from noisefast.progress import ProgressFn
from noisefast.selection import Selection, SelectionInterrupted
from noisefast.settings import Settings


@dataclass(eq=False)
class ScoreReport:
    """One prompt's scores: ``selection`` sorted by stability, ``requested`` the seeds in the order asked."""

    prompt: str
    selection: Selection | None  # None: interrupted before any of this prompt's rows finished
    requested: list[int]
    seconds: float
    images: dict[str, list] = field(default_factory=dict)  # "top" (best first), "bottom" (worst last): PIL images
    generate_seconds: float | None = None

    @property
    def complete(self) -> bool:
        return self.selection is not None and self.selection.complete

    def as_dict(self) -> dict:
        """Seeds and scores in the order asked (finished ones), best and worst, counts, timings."""
        out = {"prompt": self.prompt, "complete": self.complete, "scored": 0, "requested": len(self.requested)}
        sel = self.selection
        if sel is None:
            return out | {"seeds": [], "scores": []}
        by_seed = {s: float(v) for s, v in zip(sel.seeds, sel.scores)}
        done = [s for s in self.requested if s in by_seed]
        timings = {"score_s": round(self.seconds, 3),
                   "seeds_per_s": round(len(done) / self.seconds, 3) if self.seconds > 0 else None}  # fmt: skip
        if self.generate_seconds is not None:
            timings["generate_s"] = round(self.generate_seconds, 3)
        return out | {
            "seeds": done,
            "scores": [by_seed[s] for s in done],
            "best_seed": sel.best_seed,
            "best_score": sel.best_score,
            "worst_seed": sel.worst_seed,
            "worst_score": sel.worst_score,
            "scored": len(done),
            "timings": timings,
        }


def score_prompts(engine: Engine, prompts: Sequence[str], seeds: Sequence[int], *, settings: Settings,
                  negative_prompt: str | None = None, progress: ProgressFn | None = None) -> list[ScoreReport]:  # fmt: skip
    """Definition 1 for every (prompt, seed): the prompts' rows share UNet batches. Ctrl-C → partial reports."""
    t = time.perf_counter()
    try:
        sels = engine.select(list(prompts), seeds, negative_prompt=negative_prompt, settings=settings, progress=progress)
    except SelectionInterrupted as e:
        sels = e.result if isinstance(e.result, list) else [e.result]
    secs = time.perf_counter() - t
    return [ScoreReport(p, sel, list(seeds), secs) for p, sel in zip(prompts, sels)]


def select_prompts(engine: Engine, prompts: Sequence[str], seeds: Sequence[int], *, settings: Settings,
                   negative_prompt: str | None = None, samples: int = 1,
                   progress: ProgressFn | None = None) -> list[ScoreReport]:  # fmt: skip
    """Algorithm 1 per prompt, then the samples of its ``samples`` most and least stable seeds.

    A prompt whose scoring was interrupted gets no images. Ctrl-C while decoding stops there.
    """
    reports = score_prompts(engine, prompts, seeds, settings=settings, negative_prompt=negative_prompt, progress=progress)
    try:
        for r in reports:
            if not r.complete:
                break
            t = time.perf_counter()
            sel = r.selection
            k = max(1, min(samples, len(sel.seeds) // 2))
            top, bottom = list(sel.seeds[:k]), [s for s in sel.seeds[-k:] if s not in sel.seeds[:k]]
            gen = engine.generate(r.prompt, top + bottom, negative_prompt=negative_prompt, settings=settings)
            r.images = {"top": gen.images[: len(top)], "bottom": gen.images[len(top):] or gen.images[-1:]}
            r.generate_seconds = time.perf_counter() - t
    except KeyboardInterrupt:
        pass  # the reports without images say so (no "images" written for them)
    return reports


@dataclass(eq=False)
class OptimizeReport:
    """Algorithm 2 on one prompt's seeds (or noise), with the stability measured afresh before and after."""

    prompt: str
    seeds: list[int] | None
    optimization: Optimization
    seconds: float
    before: list[float] | None = None  # s(ε_0), rescored; None when interrupted
    after: list[float] | None = None  # s(best ε), rescored
    images_before: list = field(default_factory=list)
    images_after: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.optimization.interrupted and self.after is not None

    def as_dict(self) -> dict:
        res = self.optimization
        history = res.history.tolist()
        return {
            "prompt": self.prompt,
            "seeds": self.seeds,
            "stability_before": self.before if self.before is not None else (history[0] if history else None),
            "stability_after": self.after,
            "history": history,  # [steps + 1, B]: the optimiser's stability per step
            "steps_run": res.steps_run,
            "stop_reason": res.result.stop_reason,
            "complete": self.complete,
            "timings": {"optimize_s": round(self.seconds, 3),
                        "s_per_step": round(self.seconds / max(res.steps_run, 1), 4)},  # fmt: skip
        }


def optimize_seeds(engine: Engine, prompt: str, seeds: Sequence[int] | None = None, *, noise: torch.Tensor | None = None,
                   settings: Settings, negative_prompt: str | None = None, images: bool = True,
                   progress: ProgressFn | None = None, **options) -> OptimizeReport:  # fmt: skip
    """Algorithm 2 (``options``: iterations, lr, momentum, target, renorm, ...), then — unless interrupted —
    s(ε) before and after measured afresh (not taken from the optimiser's own history) and both samples."""
    t = time.perf_counter()
    opt = engine.optimize(prompt, None if seeds is None else list(seeds), noise=noise, negative_prompt=negative_prompt,
                          settings=settings, progress=progress, **options)  # fmt: skip
    report = OptimizeReport(prompt, None if seeds is None else list(seeds), opt, time.perf_counter() - t)
    if opt.interrupted:
        return report
    try:
        kw = dict(negative_prompt=negative_prompt, settings=settings)
        report.before = engine.score(prompt, noise=opt.initial_noise, **kw).tolist()
        report.after = engine.score(prompt, noise=opt.best_noise, **kw).tolist()
        if images:
            report.images_before = engine.generate(prompt, noise=opt.initial_noise, **kw).images
            report.images_after = engine.generate(prompt, noise=opt.best_noise, **kw).images
    except KeyboardInterrupt:
        report.after = None  # incomplete: the optimised noise is still kept by the caller
    return report


@dataclass(eq=False)
class GenerateReport:
    prompt: str
    seeds: list[int] = field(default_factory=list)  # the finished ones
    images: list = field(default_factory=list)
    requested: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return len(self.seeds) == self.requested

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "seeds": self.seeds, "complete": self.complete,
                "timings": {"generate_s": round(self.seconds, 3)}}  # fmt: skip


def generate_seeds(engine: Engine, prompt: str, seeds: Sequence[int], *, settings: Settings,
                   negative_prompt: str | None = None, progress: ProgressFn | None = None,
                   on_image=None) -> GenerateReport:  # fmt: skip
    """D(ε) for each seed, a UNet batch at a time; ``on_image(seed, image)`` as each is decoded."""
    report = GenerateReport(prompt, requested=len(seeds))
    step = settings.batch_size or engine.batch_size_for(settings)
    t = time.perf_counter()
    try:
        for lo in range(0, len(seeds), step):
            chunk = list(seeds[lo : lo + step])
            gen = engine.generate(prompt, chunk, negative_prompt=negative_prompt, settings=settings)
            for seed, img in zip(chunk, gen.images):
                if on_image is not None:
                    on_image(seed, img)
                report.seeds.append(seed)
                report.images.append(img)
            if progress is not None:
                progress(len(report.seeds), len(seeds))
    except KeyboardInterrupt:
        pass
    report.seconds = time.perf_counter() - t
    return report


__all__ = ["GenerateReport", "OptimizeReport", "ScoreReport", "generate_seeds", "optimize_seeds", "score_prompts",
           "select_prompts"]  # fmt: skip
