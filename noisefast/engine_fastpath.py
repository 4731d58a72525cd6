"""How an `EngineConfig` becomes the Engine's runtime: torch's threads, the fast-path pieces that can run on the
device, the denoiser (and what it reports: `backend_info`), and — with ``FastPathOptions(cuda_graph=True)`` — its graphed scoring chains.

A CUDA graph is captured per (settings group, batch size) on first use — the condition rows are copied into
its static buffers before each replay (`noisefast.graphs.GraphedScorer.set_condition`), so one capture
serves every prompt. Where graphs cannot run (no CUDA, a denoiser that cannot be captured) the Engine warns
once and scores eagerly.
"""

from __future__ import annotations

import warnings

import dataclasses

from noisefast.config import EngineConfig, FastPathOptions, default_threads


def apply_threads(config: EngineConfig, model) -> int:
    """Set torch's CPU threads (process-wide) to ``config.threads``, else `default_threads` for the loaded model;
    returns the count in effect."""
    import torch

    threads = config.threads
    if threads is None:
        threads = default_threads(model.kind, model.device.type)
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def usable_fast_path(opts: FastPathOptions | None, device) -> FastPathOptions | None:
    """``opts`` without what cannot run on ``device``: pinned host buffers need CUDA (one warning names it; CUDA
    graphs are refused at first use by `GraphCache`, which knows about the denoiser too)."""
    if opts is None or not opts.pinned or device.type == "cuda":
        return opts
    warnings.warn(f"noisefast: pinned seed buffers need a CUDA device (the engine runs on {device}); drawing the "
                  f"noise as usual", stacklevel=3)  # fmt: skip
    opts = dataclasses.replace(opts, pinned=False)
    return None if opts.is_plain else opts


def make_engine_denoiser(unet, backend: str, fast_path: FastPathOptions | None, *, cache_dir=None,
                         threads: int | None = None):
    """The Engine's `Denoiser`: ``backend`` over the UNet, prepared by the fast path's options first.

    ``cache_dir`` (exports, engines, compile caches, auto's decisions) and ``threads`` (ONNX Runtime's CPU
    threads: the config's, else every core) go to the backends that use them."""
    from noisefast.denoisers.backends import make_denoiser

    options = {"cache_dir": cache_dir} if backend != "torch" else {}
    if backend == "auto":
        options["threads"] = threads
        if fast_path is not None and fast_path.cuda_graph:  # a captured chain replays torch kernels only
            options["exclude"] = {n: "the CUDA-graph fast path captures the eager UNet's kernels"
                                  for n in ("compile", "onnxruntime", "tensorrt")}
    elif backend == "onnxruntime":
        options["num_threads"] = threads
    if fast_path is None:
        return make_denoiser(unet, backend, **options)
    from noisefast.denoisers.fastpath import fast_denoiser, prepare_unet

    if backend == "torch":
        return fast_denoiser(unet, fast_path)
    if backend == "auto":  # its eager candidate (and gradient path) is the fast path's denoiser
        options["eager"] = fast_denoiser(unet, fast_path)
    return make_denoiser(prepare_unet(unet, fast_path), backend, **options)


def warm_up_backend(engine, s) -> int:
    """One denoiser call per rows bucket a batch of settings ``s`` can make — every power of two up to twice the
    batch size (a CFG call stacks both halves) — so that ``auto`` decides (or reads its cached decision for) each
    call shape now, not inside a request whose timeout it would outlast. Returns the calls made (0 when the
    denoiser measures nothing: not ``auto``, or eager torch its only candidate)."""
    import torch

    from noisefast.denoisers.base import Condition

    if getattr(engine.den, "candidates", ["torch"]) == ["torch"]:  # not auto, or nothing to choose from
        return 0
    cond = engine.condition("", settings=s)
    halves = [cond.positive()] + ([cond.negative()] if cond.negative_prompt_embeds is not None else [])
    shape = engine.model.arch.latent_shape(s.height, s.width)
    rows, calls, most = 1, 0, 2 * engine.batch_size_for(s)
    with torch.inference_mode():
        while rows <= most:
            two = len(halves) == 2 and rows >= 2
            c = Condition.concat([h.expand(rows // 2) for h in halves]) if two else halves[-1].expand(rows)
            x = torch.randn(rows, *shape, device=engine.device, dtype=engine.dtype)
            engine.den(x, torch.full((rows,), 500, dtype=torch.long, device=engine.device), c)
            rows, calls = rows * 2, calls + 1
    return calls


def backend_info(den, backend: str, auto_excluded: dict[str, str] | None = None) -> dict:
    """What runs the UNet: for ``auto`` every decision so far (chosen backend, ms per call of each candidate, why
    others were excluded: `AutoDenoiser.describe`); for a fixed backend its name (and ONNX Runtime's threads).
    ``auto_excluded``: for a model whose ``auto`` has eager torch as its only candidate (SD3/FLUX), why."""
    describe = getattr(den, "describe", None)
    if callable(describe):
        return describe()
    if backend == "auto":
        return {"backend": "auto", "candidates": ["torch"], "excluded": dict(auto_excluded or {}),
                "decisions": [{"chosen": "torch", "source": "only candidate"}]}
    info = {"backend": backend}
    if getattr(den, "threads", None) is not None:
        info["threads"] = den.threads
    return info


class GraphCache:
    """One `GraphedScorer` per (settings group, rows), captured lazily; ``chain(s, rows)`` is what a
    `noisefast.batching.RowScorer` calls instead of the eager chain (None where graphs cannot run)."""

    def __init__(self, engine):
        self.engine = engine
        self.scorers: dict[tuple, object] = {}
        self.unavailable: str | None = None

    def chain(self, s, rows: int):
        from noisefast.graphs import unavailable_reason

        if self.unavailable is None:
            self.unavailable = unavailable_reason(self.engine.device, self.engine.den) or ""
            if self.unavailable:
                warnings.warn(f"noisefast: CUDA-graph scoring is off ({self.unavailable}); scoring eagerly", stacklevel=3)
        if self.unavailable:
            return None
        key = (s.group(), rows)

        def run(noise, cond):
            from noisefast.graphs import GraphedScorer

            scorer = self.scorers.get(key)
            if scorer is None:
                e = self.engine
                scorer = GraphedScorer(e.den, e.schedule(s), cond, rows, e.latent_shape(s), *e.guidance_scales(s),
                                       dtype=e.dtype, device=e.device, pinned=bool(e.fast_path.pinned))  # fmt: skip
                self.scorers[key] = scorer
            return scorer(noise, cond)

        return run
