"""The use cases, as plain functions over an `Engine`: what the command line and the server run (the screening job
runs `Engine.score_stream`). Each returns a report whose ``as_dict()`` is THE answer — the CLI's ``report.json``
records and the HTTP bodies are these dicts (the server adds only its transport fields: base64 noise or image).

- `score_prompts`: s(ε) of every seed under every prompt — seeds and scores **in the order asked**;
- `select_prompts`: Algorithm 1 per prompt — seeds and scores **ranked, most → least stable**
  (`noisefast.selection.Selection.rank`), plus the samples of the most and least stable seeds;
- `optimize_seeds`: Algorithm 2, then the stability before/after measured afresh and both samples;
- `generate_seeds`: D(ε) per seed (or per given latents), decoded.

Ctrl-C never loses finished work: each function returns what finished with ``complete=False`` instead of
raising (the caller decides the exit code).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from noisefast.engine_results import Optimization, OptimizationInterrupted
from noisefast.pipeline import Engine
from noisefast.progress import ProgressFn
from noisefast.selection import Selection, SelectionInterrupted
from noisefast.settings import Settings


def _timings(**values) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in values.items()}


@dataclass(eq=False)
class ScoreReport:
    """One prompt's scores (Definition 1): ``selection`` ranks them, ``requested`` the seeds in the order asked."""

    prompt: str
    selection: Selection | None  # None: interrupted before any of this prompt's rows finished
    requested: list[int]
    seconds: float

    @classmethod
    def from_scores(cls, prompt: str, seeds: Sequence[int], scores: torch.Tensor, seconds: float) -> "ScoreReport":
        return cls(prompt, Selection.rank(seeds, scores), list(seeds), seconds)

    @property
    def complete(self) -> bool:
        return self.selection is not None and self.selection.complete

    def as_dict(self) -> dict:
        """Seeds and scores in the order asked (the finished ones; a non-finite score is None), best and worst."""
        sel, out = self.selection, {"prompt": self.prompt}
        if sel is None:
            return out | {"seeds": [], "scores": [], "complete": False, "scored": 0, "requested": len(self.requested)}
        ranked = sel.as_dict()
        by_seed = dict(zip(ranked["seeds"], ranked["scores"]))
        done = [s for s in self.requested if s in by_seed]
        return out | ranked | {
            "seeds": done,
            "scores": [by_seed[s] for s in done],
            "requested": len(self.requested),
            "timings": _timings(score_s=self.seconds, seeds_per_s=len(done) / self.seconds if self.seconds > 0 else None),
        }


@dataclass(eq=False)
class SelectReport(ScoreReport):
    """Algorithm 1 on one prompt: the same facts as `ScoreReport`, seeds ranked most → least stable, and samples."""

    images: dict[str, list] = field(default_factory=dict)  # "top" (best first), "bottom" (worst last): PIL images
    generate_seconds: float | None = None

    def as_dict(self) -> dict:
        out = super().as_dict()
        if self.selection is not None:
            out |= self.selection.as_dict()  # ranked order
        if self.generate_seconds is not None:
            out["timings"]["generate_s"] = round(self.generate_seconds, 3)
        return out


def score_prompts(engine: Engine, prompts: Sequence[str], seeds: Sequence[int], *, settings: Settings,
                  negative_prompt: str | None = None, progress: ProgressFn | None = None,
                  report=ScoreReport) -> list[ScoreReport]:  # fmt: skip
    """Definition 1 for every (prompt, seed): the prompts' rows share UNet batches. Ctrl-C → partial reports."""
    t = time.perf_counter()
    try:
        sels = engine.select_many(list(prompts), seeds, negative_prompt=negative_prompt, settings=settings,
                                  progress=progress)  # fmt: skip
    except SelectionInterrupted as e:
        sels = e.result
    secs = time.perf_counter() - t
    return [report(p, sel, list(seeds), secs) for p, sel in zip(prompts, sels)]


def select_prompts(engine: Engine, prompts: Sequence[str], seeds: Sequence[int], *, settings: Settings,
                   negative_prompt: str | None = None, samples: int = 1,
                   progress: ProgressFn | None = None) -> list[SelectReport]:  # fmt: skip
    """Algorithm 1 per prompt, then the samples of its ``samples`` most and least stable seeds (0: none).

    A prompt whose scoring was interrupted gets no images. Ctrl-C while decoding stops there.
    """
    reports = score_prompts(engine, prompts, seeds, settings=settings, negative_prompt=negative_prompt,
                            progress=progress, report=SelectReport)  # fmt: skip
    try:
        for r in reports:
            if not r.complete or samples < 1:
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
    """Algorithm 2 on one prompt's seeds (or latents), with the stability measured afresh before and after."""

    prompt: str
    seeds: list[int] | None
    optimization: Optimization
    seconds: float
    cancelled: bool = False  # stopped by its caller (a timed-out or disconnected HTTP request)
    before: list[float] | None = None  # s(ε_0), rescored; None when interrupted
    after: list[float] | None = None  # s(best ε), rescored
    images_before: list = field(default_factory=list)
    images_after: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.optimization.interrupted or self.cancelled) and self.after is not None

    def as_dict(self) -> dict:
        res = self.optimization
        history = [[v if math.isfinite(v) else None for v in row] for row in res.history.tolist()]
        return {
            "prompt": self.prompt,
            "seeds": self.seeds,
            "stability_before": self.before if self.before is not None else (history[0] if history else None),
            "stability_after": self.after,
            "history": history,  # [steps_run + 1, B]: the optimiser's stability per step
            "steps_run": res.steps_run,
            "stop_reason": res.result.stop_reason,
            "complete": self.complete,
            "timings": _timings(optimize_s=self.seconds, s_per_step=self.seconds / max(res.steps_run, 1)),
        }


def optimize_seeds(engine: Engine, prompt: str, seeds: Sequence[int] | None = None, *,
                   latents: torch.Tensor | None = None, settings: Settings, negative_prompt: str | None = None,
                   images: bool = True, progress: ProgressFn | None = None,
                   cancelled: Callable[[], bool] | None = None, **options) -> OptimizeReport:  # fmt: skip
    """Algorithm 2 (``options``: iterations, lr, momentum, target, renorm, ...), then — unless interrupted or
    ``cancelled()`` — s(ε) before and after measured afresh (not taken from the optimiser's history) and both
    samples. ``cancelled`` is checked between iterations (the server's timeouts and disconnects)."""
    t = time.perf_counter()
    stop = None if cancelled is None else (lambda state: False if cancelled() else None)
    try:
        opt = engine.optimize(prompt, None if seeds is None else list(seeds), latents=latents,
                              negative_prompt=negative_prompt, settings=settings, progress=progress, callback=stop,
                              **options)  # fmt: skip
    except OptimizationInterrupted as e:
        return OptimizeReport(prompt, None if seeds is None else list(seeds), e.result, time.perf_counter() - t)
    report = OptimizeReport(prompt, None if seeds is None else list(seeds), opt, time.perf_counter() - t)
    report.cancelled = cancelled is not None and opt.result.stop_reason == "callback"
    if report.cancelled:
        return report
    try:
        kw = dict(negative_prompt=negative_prompt, settings=settings)
        report.before = engine.score(prompt, latents=opt.initial_noise, **kw).tolist()
        report.after = engine.score(prompt, latents=opt.best_noise, **kw).tolist()
        if images:
            report.images_before = engine.generate(prompt, latents=opt.initial_noise, **kw).images
            report.images_after = engine.generate(prompt, latents=opt.best_noise, **kw).images
    except KeyboardInterrupt:
        report.after = None  # incomplete: the optimised noise is still kept by the caller
    return report


@dataclass(eq=False)
class GenerateReport:
    prompt: str
    seeds: list[int] | None = field(default_factory=list)  # the finished ones (None: from given latents)
    images: list = field(default_factory=list)
    requested: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return len(self.images) == self.requested

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "seeds": self.seeds, "complete": self.complete,
                "timings": _timings(generate_s=self.seconds)}  # fmt: skip


def generate_seeds(engine: Engine, prompt: str, seeds: Sequence[int] | None = None, *,
                   latents: torch.Tensor | None = None, settings: Settings, negative_prompt: str | None = None,
                   progress: ProgressFn | None = None, step_progress: ProgressFn | None = None,
                   on_image=None) -> GenerateReport:  # fmt: skip
    """D(ε) for each seed (or each row of ``latents``), a UNet batch at a time; ``on_image(seed, image)`` as each
    is decoded (``seed`` None for given latents); ``progress(images_done, total)`` after each batch,
    ``step_progress(steps_done, steps_total)`` after each denoising step (steps_total = batches × steps)."""
    total = len(latents) if latents is not None else len(seeds)
    report = GenerateReport(prompt, None if latents is not None else [], requested=total)
    step = engine.batch_size_for(settings)
    chunks = range(0, total, step)
    steps_total = len(chunks) * settings.steps
    t = time.perf_counter()
    if step_progress is not None:
        step_progress(0, steps_total)  # a bar's clock starts with the work
    try:
        for n, lo in enumerate(chunks):
            chunk = dict(latents=latents[lo : lo + step]) if latents is not None else dict(seeds=list(seeds[lo : lo + step]))
            sp = None if step_progress is None else (  # each chunk's steps, offset by the chunks before (0s skipped)
                lambda done, _total, base=n * settings.steps: done and step_progress(base + done, steps_total))  # fmt: skip
            gen = engine.generate(prompt, negative_prompt=negative_prompt, settings=settings, step_progress=sp, **chunk)
            for i, img in enumerate(gen.images):
                seed = None if latents is not None else chunk["seeds"][i]
                if on_image is not None:
                    on_image(seed, img)
                if seed is not None:
                    report.seeds.append(seed)
                report.images.append(img)
            if progress is not None:
                progress(len(report.images), total)
    except KeyboardInterrupt:
        pass
    report.seconds = time.perf_counter() - t
    return report


__all__ = ["GenerateReport", "OptimizeReport", "ScoreReport", "SelectReport", "generate_seeds", "optimize_seeds",
           "score_prompts", "select_prompts"]  # fmt: skip
