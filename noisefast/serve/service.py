"""The server's state and its four use cases, free of HTTP: `ServeConfig` (every option of ``noisefast
serve``), `Service` (the engine loaded once, the `Batcher` that owns it, the metrics, the optional seed
bank) and ``score/select/optimize/generate`` returning the response models of `noisefast.serve.schemas`.

Results equal the Engine's for the same inputs: scores go through ``engine.scorer(settings)`` rows (the
packing `Engine.select` uses), selections are sorted exactly as `noisefast.selection` sorts, optimize and
generate call `Engine.optimize` / `Engine.generate` on the model's thread.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import torch

from noisefast.defaults import DEFAULT_BACKEND
from noisefast.errors import InputError, LimitError
from noisefast.serve.batcher import Batcher
from noisefast.serve.metrics import Metrics
from noisefast.serve.schemas import GenerateIn, GenerateOut, OptimizeIn, OptimizeOut, ScoreIn, ScoreOut, SelectOut, SettingsIn


@dataclass
class ServeConfig:
    model: str = "builtin:digits"
    device: str | None = None
    dtype: str | None = None  # "fp16" | "bf16" | "fp32"
    backend: str = DEFAULT_BACKEND
    threads: int | None = None
    cache_dir: str | None = None
    strict: bool = False
    max_batch: int = 32  # rows per UNet batch (1 = no dynamic batching)
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


class FieldLimit(InputError):
    """A value over a configured service limit; ``loc`` names the field (answered 422 like a schema error)."""

    http_status = 422

    def __init__(self, loc: tuple, msg: str):
        super().__init__(msg)
        self.loc = loc


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


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
        """Load the model (unless given), the bank, and start the model's thread."""
        c = self.config
        if self.engine is None:
            from noisefast.pipeline import Engine

            self.engine = Engine.from_pretrained(c.model, device=c.device, dtype=DTYPES.get(c.dtype), backend=c.backend,
                                                 strict=c.strict, cache_dir=c.cache_dir, threads=c.threads)  # fmt: skip
        if c.threads is not None:
            torch.set_num_threads(c.threads)
        elif self.engine.kind == "pixel" and self.engine.device.type == "cpu":
            torch.set_num_threads(1)  # as the CLI: tiny layers lose to threading overhead
        self.engine.batch_size_for(self.settings(SettingsIn()))  # refuses a max batch that cannot fit
        if c.bank:
            from noisefast.serve.bank import SeedBank

            self.bank = SeedBank.load(c.bank)
            if self.bank.model != self.engine.model.source:
                raise InputError(f"--bank was screened with model {self.bank.model!r}, the server runs {c.model!r}")
        self.batcher = Batcher(self.engine, max_batch=c.max_batch, max_wait_s=c.max_wait_ms / 1000,
                               max_queue_rows=c.max_queue_rows, max_queue_tasks=c.max_queue_tasks,
                               metrics=self.metrics).start()  # fmt: skip
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
        """``GET /v1/info``: the model facts (`Engine.describe`, with ``backend_info``), readiness and batching."""
        if self.engine is None:
            return {"model": {"model": self.config.model}, "ready": False}
        return {"model": self.engine.describe(), "ready": self.ready, "max_batch": self.config.max_batch,
                "threads": torch.get_num_threads()}

    # --- checks --------------------------------------------------------------------------------------------
    def settings(self, s: SettingsIn):
        c = self.config
        for name, limit in (("steps", c.max_steps), ("inversion_steps", c.max_steps), ("height", c.max_side),
                            ("width", c.max_side)):  # fmt: skip
            v = getattr(s, name)
            if v is not None and v > limit:
                raise FieldLimit(("body", "settings", name), f"settings.{name}={v} is over this server's limit of {limit}")
        return self.engine.settings(**s.overrides(), batch_size=c.max_batch)

    def _seeds(self, req: ScoreIn) -> list[int]:
        n = req.seed_count()
        if n > self.config.max_seeds:
            raise FieldLimit(("body", "seeds"), f"{n} seeds is over this server's limit of {self.config.max_seeds} per request")
        if n == 0:
            raise FieldLimit(("body", "seeds"), "seeds is empty")
        return req.seed_list()

    # --- use cases -----------------------------------------------------------------------------------------
    async def score(self, req: ScoreIn, client_gone=None) -> ScoreOut:
        seeds, s = self._seeds(req), self.settings(req.settings)
        scores = await self.batcher.score(req.prompt, seeds, s, negative_prompt=req.negative_prompt,
                                          timeout=self.config.request_timeout_s, client_gone=client_gone)  # fmt: skip
        return ScoreOut(seeds=seeds, scores=_floats(scores))

    async def select(self, req: ScoreIn, client_gone=None) -> SelectOut:
        seeds, s = self._seeds(req), self.settings(req.settings)
        scores, source = None, "computed"
        if self.bank is not None and req.negative_prompt is None:
            scores, source = self.bank.lookup(req.prompt, seeds, s), "bank"
            if scores is None and self.config.bank_any_prompt:
                scores, source = self.bank.lookup_any(seeds, s), "bank-any-prompt"
        if scores is None:
            scores, source = await self.batcher.score(req.prompt, seeds, s, negative_prompt=req.negative_prompt,
                                                      timeout=self.config.request_timeout_s,
                                                      client_gone=client_gone), "computed"  # fmt: skip
        # exactly `noisefast.selection._selection`'s order: descending, stable, NaN last
        order = torch.sort(scores.nan_to_num(nan=-torch.inf), descending=True, stable=True).indices.tolist()
        sorted_seeds, sorted_scores = [seeds[i] for i in order], _floats(scores[order])
        return SelectOut(best_seed=sorted_seeds[0], best_score=sorted_scores[0], worst_seed=sorted_seeds[-1],
                         worst_score=sorted_scores[-1], seeds=sorted_seeds, scores=sorted_scores, source=source)  # fmt: skip

    async def optimize(self, req: OptimizeIn, client_gone=None) -> OptimizeOut:
        if req.iterations > self.config.max_iterations:
            raise FieldLimit(("body", "iterations"),
                             f"iterations={req.iterations} is over this server's limit of {self.config.max_iterations}")  # fmt: skip
        s = self.settings(req.settings)

        def run(cancelled):
            return self.engine.optimize(req.prompt, [req.seed], negative_prompt=req.negative_prompt,
                                        iterations=req.iterations, lr=req.lr, momentum=req.momentum, target=req.target,
                                        renorm=req.renorm, settings=s,
                                        callback=lambda state: False if cancelled() else None)  # fmt: skip

        opt = await self.batcher.run(run, timeout=self.config.request_timeout_s, client_gone=client_gone)
        curve = _floats(opt.history[:, 0])
        best = max((v for v in curve if v is not None), default=None)
        return OptimizeOut(seed=req.seed, initial_stability=curve[0] if curve else None,
                           final_stability=curve[-1] if curve else None, best_stability=best, curve=curve,
                           steps_run=opt.steps_run, stop_reason=opt.result.stop_reason,
                           noise=base64.b64encode(opt.noise_bytes()).decode("ascii"))  # fmt: skip

    async def generate(self, req: GenerateIn, client_gone=None) -> tuple[GenerateOut, bytes]:
        s = self.settings(req.settings)
        noise = None if req.noise is None else decode_noise(req.noise)

        def run(cancelled):
            gen = self.engine.generate(req.prompt, None if noise is not None else [req.seed], noise=noise,
                                       negative_prompt=req.negative_prompt, settings=s)  # fmt: skip
            buf = io.BytesIO()
            gen.images[0].save(buf, format="PNG")
            return buf.getvalue()

        png = await self.batcher.run(run, timeout=self.config.request_timeout_s, client_gone=client_gone)
        out = GenerateOut(seed=req.seed, width=s.width, height=s.height, image=base64.b64encode(png).decode("ascii"))
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


def _floats(t: torch.Tensor) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in t.tolist()]


__all__ = ["FieldLimit", "ServeConfig", "Service", "decode_noise"]
