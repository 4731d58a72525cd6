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
from noisefast.params import SETTINGS
from noisefast.serve.batcher import Batcher
from noisefast.serve.cost import DEFAULT_MAX_COST, generate_cost, optimize_cost, score_cost
from noisefast.serve.metrics import Metrics


@dataclass
class ServeConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)  # the Engine every request runs on
    max_wait_ms: float = 5.0  # how long a batch waits for more rows
    max_queue_rows: int = 4096  # beyond: 429
    max_queue_tasks: int = 64  # optimize/generate waiting; beyond: 429
    request_timeout_s: float = 60.0  # beyond: 504; queued rows dropped, running rows leave their batch
    max_seeds: int = 1024  # per request
    max_steps: int = 100  # steps and inversion_steps
    max_side: int = 1024  # height and width, pixels
    max_iterations: int = 500  # optimize
    max_cost: int = DEFAULT_MAX_COST  # rows × UNet calls × latent pixels per request (noisefast.serve.cost)
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 30.0  # the whole body must arrive within this; else 408
    max_header_bytes: int = 16_384  # request line + headers; beyond: 431 (and the h11 parser's bound)
    max_headers: int = 100  # header fields; beyond: 431
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this (uvicorn)
    api_key: str | None = None
    bank: str | None = None
    bank_any_prompt: bool = False
    warmup: bool = True

    def limits(self) -> dict:
        return {k: getattr(self, k) for k in LIMITS}

    def models(self):
        """This server's request models (`noisefast.serve.inputs`: every limit declared on its field)."""
        from noisefast.serve.inputs import request_models

        return request_models(max_seeds=self.max_seeds, max_steps=self.max_steps, max_side=self.max_side,
                              max_iterations=self.max_iterations, max_body_bytes=self.max_body_bytes,
                              max_cost=self.max_cost)  # fmt: skip


LIMITS = ("max_seeds", "max_steps", "max_side", "max_iterations", "max_cost", "max_body_bytes", "body_timeout_s",
          "max_header_bytes", "max_headers", "keep_alive_s", "max_queue_rows", "max_queue_tasks", "request_timeout_s",
          "max_wait_ms")  # fmt: skip


class FieldLimit(InputError):
    """A value the service refuses; ``loc`` names the field (answered 422 like a schema error)."""

    http_status = 422
    kind = "limit"

    def __init__(self, loc: tuple, msg: str):
        super().__init__(msg, field=str(loc[-1]))
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
        self.engine.batch_size_for(self.engine.settings(batch_size=c.engine.batch_size))  # refuses a batch that cannot fit
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
            import asyncio

            from noisefast.engine_fastpath import warm_up_backend

            # backend auto: every rows bucket decided (or read from the cache) before the first request, so no
            # request pays for a measurement its timeout cannot stop
            s = self.engine.settings(batch_size=self.config.engine.batch_size)
            await asyncio.get_running_loop().run_in_executor(None, warm_up_backend, self.engine, s)
            await self.batcher.score("warm-up", [0], self.engine.settings(batch_size=self.config.engine.batch_size),
                                     timeout=600)  # fmt: skip
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

    def image_bounds(self) -> tuple[int, int]:
        """(multiple, largest side) an image's height and width must keep on this model and server."""
        multiple = self.engine.model.arch.size_multiple()[0]
        top = min(self.config.max_side, self.engine.defaults.max_side)
        return multiple, top - top % multiple

    # --- checks --------------------------------------------------------------------------------------------
    def settings(self, s, **given):
        """The Engine's settings for a request's ``settings`` (the schema held the server's limits; the Engine
        checks the model's own: multiples of its spatial factor, its largest side), ``given`` added."""
        try:
            return self.engine.settings(**s.overrides(), **given, batch_size=self.config.engine.batch_size)
        except InputError as e:
            if e.field in SETTINGS and e.field != "batch_size":
                raise FieldLimit(("body", "settings", e.field), str(e)) from None
            raise

    # --- use cases -----------------------------------------------------------------------------------------
    def _scored(self, req):
        """(seeds, settings) of a score/select request, its cost checked."""
        seeds, s = req.seed_list(), self.settings(req.settings)
        score_cost(self.config.max_cost, len(seeds), s, self.engine.latent_shape(s))
        return seeds, s

    async def _scores(self, req, seeds: list[int], s, client_gone) -> torch.Tensor:
        return await self.batcher.score(req.prompt, seeds, s, negative_prompt=req.negative_prompt,
                                        timeout=self.config.request_timeout_s, client_gone=client_gone)  # fmt: skip

    async def score(self, req, client_gone=None) -> dict:
        from noisefast.workflows import ScoreReport

        (seeds, s), t = self._scored(req), time.perf_counter()
        scores = await self._scores(req, seeds, s, client_gone)
        return ScoreReport.from_scores(req.prompt, seeds, scores, time.perf_counter() - t).as_dict()

    async def select(self, req, client_gone=None) -> dict:
        from noisefast.selection import Selection
        from noisefast.workflows import SelectReport

        (seeds, s), t = self._scored(req), time.perf_counter()
        scores, source = None, "computed"
        if self.bank is not None and req.negative_prompt is None:
            scores, source = self.bank.lookup(req.prompt, seeds, s), "bank"
            if scores is None and self.config.bank_any_prompt:
                scores, source = self.bank.lookup_any(seeds, s), "bank-any-prompt"
        if scores is None:
            scores, source = await self._scores(req, seeds, s, client_gone), "computed"
        sel = Selection.rank(seeds, scores)
        return SelectReport(req.prompt, sel, seeds, time.perf_counter() - t).as_dict() | {"source": source}

    async def optimize(self, req, client_gone=None) -> dict:
        from noisefast.workflows import optimize_seeds

        s = self.settings(req.settings)
        optimize_cost(self.config.max_cost, req.iterations, s, self.engine.latent_shape(s))

        def run(cancelled):
            return optimize_seeds(self.engine, req.prompt, [req.seed], settings=s, negative_prompt=req.negative_prompt,
                                  images=False, cancelled=cancelled, iterations=req.iterations, lr=req.lr,
                                  momentum=req.momentum, target=req.target, renorm=req.renorm)  # fmt: skip

        report = await self.batcher.run(run, timeout=self.config.request_timeout_s, client_gone=client_gone)
        noise = base64.b64encode(report.optimization.noise_bytes()).decode("ascii")
        return report.as_dict() | {"noise": noise, "noise_format": "safetensors+base64"}

    async def generate(self, req, client_gone=None) -> tuple[dict, bytes]:
        from noisefast.workflows import generate_seeds

        latents, s = None, None
        if req.noise is None:
            s = self.settings(req.settings)
        else:
            latents, s = self._noise_settings(req)
        generate_cost(self.config.max_cost, s, self.engine.latent_shape(s))

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

    def _noise_settings(self, req):
        """(latents, settings) of a generate request with noise: the image size is the noise's h·f × w·f."""
        for name in ("height", "width"):
            if getattr(req.settings, name) is not None:
                raise FieldLimit(("body", "settings", name), f"settings.{name}: with noise the image size is the "
                                 f"noise's; leave height and width out")  # fmt: skip
        latents = decode_noise(req.noise)
        f, channels = self.engine.model.spatial_factor, self.engine.latent_shape(self.engine.settings())[0]
        if latents.shape[1] != channels:
            raise FieldLimit(("body", "noise"), f"noise has {latents.shape[1]} channels; this model's latents have "
                             f"{channels}: [1, {channels}, h, w]")  # fmt: skip
        multiple, top = self.image_bounds()
        height, width = latents.shape[2] * f, latents.shape[3] * f
        if height % multiple or width % multiple or max(height, width) > top:
            raise FieldLimit(("body", "noise"), f"noise of {latents.shape[2]}×{latents.shape[3]} is a {height}×{width} "
                             f"image; this server takes sides that are multiples of {multiple} up to {top}")  # fmt: skip
        return latents, self.settings(req.settings, height=height, width=width)


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
        raise LimitError("noise is too large", field="noise")
    return t.float()


__all__ = ["FieldLimit", "ServeConfig", "Service", "decode_noise"]
