"""The server's state and its four use cases, free of HTTP: `ServeConfig` (every option of ``noisefast serve``:
the `EngineConfig` and the server's own), `Service` (the Engine built once from that config, the `Batcher` that
owns it, the metrics, the optional seed bank) and ``score/select/optimize/generate``.

The answers are the `noisefast.workflows` reports' ``as_dict()`` — the same fields, names and seed order as the
CLI's ``report.json`` (score: the order asked; select: ranked most → least stable) — plus transport fields
(base64 noise or image). Scores go through ``engine.scorer(settings)`` rows (the packing `Engine.select` uses);
optimize and generate run the workflows on the model's thread.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field

import torch

from noisefast.config import EngineConfig
from noisefast.errors import InputError, LimitError
from noisefast.serve.batcher import Batcher
from noisefast.serve.metrics import Metrics
from noisefast.serve.schemas import GenerateIn, OptimizeIn, ScoreIn, SettingsIn


@dataclass
class ServeConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)  # the Engine every request runs on
    max_wait_ms: float = 5.0  # how long a batch waits for more rows
    max_queue_rows: int = 4096  # beyond: 429
    max_queue_tasks: int = 64  # optimize/generate waiting; beyond: 429
    request_timeout_s: float = 60.0  # beyond: 504 (queued rows dropped)
    max_seeds: int = 1024  # per request
    max_steps: int = 100  # steps and inversion_steps
    max_side: int = 1024  # height and width, pixels
    max_iterations: int = 500  # optimize
    max_body_bytes: int = 1_000_000
    api_key: str | None = None
    bank: str | None = None
    bank_any_prompt: bool = False
    warmup: bool = True

    def limits(self) -> dict:
        return {"max_seeds": self.max_seeds, "max_steps": self.max_steps, "max_side": self.max_side,
                "max_iterations": self.max_iterations, "max_body_bytes": self.max_body_bytes,
                "max_queue_rows": self.max_queue_rows, "max_queue_tasks": self.max_queue_tasks,
                "request_timeout_s": self.request_timeout_s, "max_wait_ms": self.max_wait_ms}  # fmt: skip


class FieldLimit(InputError):
    """A value over a configured service limit; ``loc`` names the field (answered 422 like a schema error)."""

    http_status = 422

    def __init__(self, loc: tuple, msg: str):
        super().__init__(msg)
        self.loc = loc


class Service:
    def __init__(self, config: ServeConfig, engine=None):
        self.config = config
        self.metrics = Metrics()
        self.engine = engine
        self.batcher: Batcher | None = None
        self.bank = None
        self.ready = False

    # --- lifecycle ----------------------------------------------------------------------------------------
    def load(self) -> "Service":
        """Build the Engine from ``config.engine`` (unless one was given), load the bank, start the model's thread."""
        c = self.config
        if self.engine is None:
            from noisefast.pipeline import Engine

            self.engine = Engine.from_config(c.engine)
        self.engine.batch_size_for(self.settings(SettingsIn()))  # refuses a batch size that cannot fit
        if c.bank:
            from noisefast.serve.bank import SeedBank

            self.bank = SeedBank.load(c.bank)
            if self.bank.model != self.engine.model.source:
                raise InputError(f"--bank was screened with model {self.bank.model!r}, the server runs "
                                 f"{self.engine.model.source!r}")  # fmt: skip
        self.batcher = Batcher(self.engine, max_wait_s=c.max_wait_ms / 1000, max_queue_rows=c.max_queue_rows,
                               max_queue_tasks=c.max_queue_tasks, metrics=self.metrics).start()  # fmt: skip
        self.metrics.track_batcher(self.batcher)
        return self

    async def warm_up(self) -> None:
        if self.config.warmup:
            await self.batcher.score("warm-up", [0], self.settings(SettingsIn()), timeout=600)
        self.ready = True
        self.metrics.ready.set(1)

    def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.stop()

    def info(self) -> dict:
        """``GET /v1/info``: the engine configuration in effect (as reports and screen manifests record it) and
        this server's limits."""
        from noisefast import __version__

        return {"version": __version__, "engine": self.engine.describe(), "limits": self.config.limits(),
                "bank": self.config.bank}  # fmt: skip

    # --- checks --------------------------------------------------------------------------------------------
    def settings(self, s: SettingsIn):
        c = self.config
        for name, limit in (("steps", c.max_steps), ("inversion_steps", c.max_steps), ("height", c.max_side),
                            ("width", c.max_side)):  # fmt: skip
            v = getattr(s, name)
            if v is not None and v > limit:
                raise FieldLimit(("body", "settings", name), f"settings.{name}={v} is over this server's limit of {limit}")
        return self.engine.settings(**s.overrides(), batch_size=c.engine.batch_size)

    def _seeds(self, req: ScoreIn) -> list[int]:
        n = req.seed_count()
        if n > self.config.max_seeds:
            raise FieldLimit(("body", "seeds"), f"{n} seeds is over this server's limit of {self.config.max_seeds} per request")
        if n == 0:
            raise FieldLimit(("body", "seeds"), "seeds is empty")
        return req.seed_list()

    # --- use cases -----------------------------------------------------------------------------------------
    async def _scores(self, req: ScoreIn, seeds: list[int], s, client_gone) -> torch.Tensor:
        return await self.batcher.score(req.prompt, seeds, s, negative_prompt=req.negative_prompt,
                                        timeout=self.config.request_timeout_s, client_gone=client_gone)  # fmt: skip

    async def score(self, req: ScoreIn, client_gone=None) -> dict:
        from noisefast.workflows import ScoreReport

        seeds, s, t = self._seeds(req), self.settings(req.settings), time.perf_counter()
        scores = await self._scores(req, seeds, s, client_gone)
        return ScoreReport.from_scores(req.prompt, seeds, scores, time.perf_counter() - t).as_dict()

    async def select(self, req: ScoreIn, client_gone=None) -> dict:
        from noisefast.selection import Selection
        from noisefast.workflows import SelectReport

        seeds, s, t = self._seeds(req), self.settings(req.settings), time.perf_counter()
        scores, source = None, "computed"
        if self.bank is not None and req.negative_prompt is None:
            scores, source = self.bank.lookup(req.prompt, seeds, s), "bank"
            if scores is None and self.config.bank_any_prompt:
                scores, source = self.bank.lookup_any(seeds, s), "bank-any-prompt"
        if scores is None:
            scores, source = await self._scores(req, seeds, s, client_gone), "computed"
        sel = Selection.rank(seeds, scores)
        return SelectReport(req.prompt, sel, seeds, time.perf_counter() - t).as_dict() | {"source": source}

    async def optimize(self, req: OptimizeIn, client_gone=None) -> dict:
        from noisefast.workflows import optimize_seeds

        if req.iterations > self.config.max_iterations:
            raise FieldLimit(("body", "iterations"),
                             f"iterations={req.iterations} is over this server's limit of {self.config.max_iterations}")  # fmt: skip
        s = self.settings(req.settings)

        def run(cancelled):
            return optimize_seeds(self.engine, req.prompt, [req.seed], settings=s, negative_prompt=req.negative_prompt,
                                  images=False, cancelled=cancelled, iterations=req.iterations, lr=req.lr,
                                  momentum=req.momentum, target=req.target, renorm=req.renorm)  # fmt: skip

        report = await self.batcher.run(run, timeout=self.config.request_timeout_s, client_gone=client_gone)
        noise = base64.b64encode(report.optimization.noise_bytes()).decode("ascii")
        return report.as_dict() | {"noise": noise, "noise_format": "safetensors+base64"}

    async def generate(self, req: GenerateIn, client_gone=None) -> tuple[dict, bytes]:
        from noisefast.workflows import generate_seeds

        s = self.settings(req.settings)
        latents = None if req.noise is None else decode_noise(req.noise)

        def run(cancelled):
            report = generate_seeds(self.engine, req.prompt, None if latents is not None else [req.seed],
                                    latents=latents, settings=s, negative_prompt=req.negative_prompt)  # fmt: skip
            buf = io.BytesIO()
            report.images[0].save(buf, format="PNG")
            return report, buf.getvalue()

        report, png = await self.batcher.run(run, timeout=self.config.request_timeout_s, client_gone=client_gone)
        out = report.as_dict() | {"width": s.width, "height": s.height, "image": base64.b64encode(png).decode("ascii"),
                                  "format": "png"}  # fmt: skip
        return out, png


def decode_noise(text: str) -> torch.Tensor:
    """A noise tensor from base64 safetensors (no pickle): its only tensor, or its ``best``; [1, C, H, W]."""
    from safetensors.torch import load

    try:
        tensors = load(base64.b64decode(text, validate=True))
    except Exception as e:  # binascii.Error, SafetensorError, ...
        raise FieldLimit(("body", "noise"), f"noise is not base64 of a safetensors file ({type(e).__name__})") from None
    if len(tensors) == 1:
        (t,) = tensors.values()
    elif "best" in tensors:
        t = tensors["best"]
    else:
        raise FieldLimit(("body", "noise"), f"noise holds tensors {sorted(tensors)}: give one tensor (or 'best')")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[0] != 1:
        raise FieldLimit(("body", "noise"), f"noise must be [1, C, H, W] or [C, H, W], got {list(t.shape)}")
    if not t.is_floating_point():
        raise FieldLimit(("body", "noise"), f"noise must be floating point, got {t.dtype}")
    if t.numel() > 64 * 1024 * 1024:
        raise LimitError("noise is too large")
    return t.float()


__all__ = ["FieldLimit", "ServeConfig", "Service", "decode_noise"]
