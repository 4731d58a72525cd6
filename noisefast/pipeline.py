"""`Engine`: a loaded model (SDXL, SDXL-Turbo, SD3/SD3.5, FLUX.1 or a built-in pixel model) and the four
algorithms over it.

    engine = Engine.from_pretrained("stabilityai/sdxl-turbo")       # or a local folder, or "builtin:digits"
    engine = Engine.from_config(EngineConfig(model=..., backend="onnxruntime", batch_size=16))
    engine = Engine.from_pipe(pipe)                                  # a loaded StableDiffusionXLPipeline, shared
    sel = engine.select("a red fox in snow", seeds=range(100))       # Algorithm 1 → Selection
    sels = engine.select_many(["a fox", "a cat"], seeds=range(100))  # several prompts share UNet batches
    img = engine.generate("a red fox in snow", seeds=[sel.best_seed]).images[0]
    opt = engine.optimize("a red fox in snow", seeds=[sel.worst_seed])  # Algorithm 2 → Optimization
    pipe("a red fox in snow", latents=sel.best_latents, ...)         # the same sample in a stock pipeline

Settings: every method takes the per-call settings as keywords (``height``, ``width``, ``steps``,
``inversion_steps``, ``guidance_scale``, ``inversion_guidance_scale``, ``batch_size``; `noisefast.params.SETTINGS`)
or a resolved ``settings=Settings(...)``; what is not given comes from the model's `ModelDefaults` (an unknown
keyword is refused). A prompt's condition is encoded once and cached; ``condition=`` passes a precomputed one.

Rows: whatever the method, the noises go through the same path — `Engine.scorer` (`noisefast.batching.RowScorer`:
batches of ``batch_size`` rows, bucket padding for shape-specialised backends, CUDA-graph chains, pinned draws),
whether they come from seeds (what diffusers draws: ``generator=torch.Generator("cpu").manual_seed(seed)``) or
from given ``latents=`` [K, C, H, W] (``noise=`` is the same keyword's older name).

Models: what differs between UNets (DDIM) and SD3/FLUX transformers (flow Euler) is one `noisefast.architectures`
object, ``model.arch`` (latent shape, sizes, schedule, guidance scales, denoiser); the Engine branches on nothing else.
Backend ``"auto"`` (the default): per call shape the fastest measured here, cached (`noisefast.denoisers.auto`).

Ctrl-C: `select`/`select_many` raise `noisefast.selection.SelectionInterrupted`, `optimize` raises
`OptimizationInterrupted` — both `noisefast.errors.Interrupted`, whose ``.result`` holds what finished.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Sequence

import torch

from noisefast.batching import RowScorer, ScoredRows, ScoreJob, bucket_sizes, row_batches, score_stream
from noisefast.config import EngineConfig
from noisefast.decode import decode_latents
from noisefast.defaults import DEFAULT_BATCH_SIZE, ModelDefaults
from noisefast.denoisers.base import Condition
from noisefast.denoisers.guidance import needs_negative
from noisefast.engine_inputs import candidate_seeds, check_latents, check_prompt, engine_seeds
from noisefast.engine_fastpath import GraphCache, apply_threads, backend_info, usable_fast_path
from noisefast.engine_results import Generation, Optimization, OptimizationInterrupted
from noisefast.errors import InputError, LimitError
from noisefast.flow_schedule import Schedule
from noisefast.loading import LoadedModel, load_model, model_from_pipe
from noisefast.optimize import optimize_noise
from noisefast.params import OPTIMIZE
from noisefast.progress import ProgressFn, step_counter
from noisefast.selection import Selection, select_many, select_one
from noisefast.settings import Settings, check_fits_memory, resolve_settings

SHAPE_SPECIALISED_BACKENDS = ("tensorrt",)  # compile takes any batch (dynamic batch dimension)
CONDITION_CACHE_SIZE = 256  # encoded prompts kept per engine


class Engine:
    """One loaded model, its denoiser and its `EngineConfig`; methods run the paper's algorithms."""

    def __init__(self, model: LoadedModel, config: EngineConfig | None = None):
        from noisefast._ext import require_kernels

        config = EngineConfig(model=model.source) if config is None else config
        if config.strict:  # a service must not run 3–5× slower on the pure-torch fallback without knowing
            require_kernels(model.device)
        self.model, self.config = model, config
        self.threads = apply_threads(config, model)  # torch's thread count is process-wide
        self.fast_path = usable_fast_path(config.fast_path, model.device)  # CUDA-only pieces off (one warning)
        self.den = model.arch.make_denoiser(config.backend, self.fast_path, cache_dir=config.cache_dir,
                                            threads=config.threads)  # a UNet (any backend) or an SD3/FLUX transformer
        self._graphs = GraphCache(self) if self.fast_path is not None and self.fast_path.cuda_graph else None
        self.defaults: ModelDefaults = model.defaults
        self._conditions: OrderedDict[tuple, Condition] = OrderedDict()

    @classmethod
    def from_config(cls, config: EngineConfig) -> "Engine":
        """Load ``config.model`` (hub id — local cache first —, a local diffusers folder, or ``builtin:NAME``)."""
        if not isinstance(config, EngineConfig):
            raise InputError(f"config must be a noisefast EngineConfig, got {type(config).__name__}")
        model = load_model(config.model, device=config.device, dtype=config.dtype, variant=config.variant,
                           family=config.family)  # fmt: skip
        return cls(model, config)

    @classmethod
    def from_pretrained(cls, model: str, **options) -> "Engine":
        """``Engine.from_config(EngineConfig(model=model, **options))``; ``options``: device, dtype, backend,
        variant, family, batch_size, threads, strict, fast_path (see `EngineConfig`)."""
        return cls.from_config(EngineConfig(model=model, **options))

    @classmethod
    def from_pipe(cls, pipe, **options) -> "Engine":
        """An Engine over a loaded diffusers `StableDiffusionXLPipeline` (SDXL / SDXL-Turbo), `StableDiffusion3Pipeline`
        or `FluxPipeline`: its modules are shared, not copied — device, dtype, offload hooks, LoRAs and a compiled UNet stay as the pipe has them.
        ``options``: backend, batch_size, threads, strict, fast_path, family (device/dtype/variant come from the pipe)."""
        fixed = sorted(k for k in ("model", "device", "dtype", "variant") if k in options)
        if fixed:
            raise InputError(f"from_pipe takes {', '.join(fixed)} from the pipeline; do not pass them")
        model = model_from_pipe(pipe, family=options.get("family"))
        return cls(model, EngineConfig(model=model.source, device=str(model.device), **options))

    # --- what was built ------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    kind = property(lambda self: self.model.kind, doc="the model's kind: 'sdxl', 'pixel', 'sd3' or 'flux'")
    backend = property(lambda self: self.config.backend, doc="the configured backend (auto: see `backend_info`)")
    batch_size = property(lambda self: self.config.batch_size, doc="configured rows per UNet batch (None: the model's)")

    def describe(self) -> dict:
        """The model and the engine configuration in effect (what reports, ``/v1/info`` and manifests record)."""
        from dataclasses import asdict

        m = self.model
        return {
            "model": m.source,
            "folder": None if m.folder is None else str(m.folder),
            "kind": m.kind,
            "family": m.defaults.family,
            "sampler": m.arch.sampler,  # "DDIM" or "Euler (flow matching)"
            "guidance": m.arch.guidance,  # the denoising scale: "classifier-free" or "embedded" (FLUX.1-dev)
            "device": str(m.device),
            "dtype": str(m.dtype).replace("torch.", ""),
            "backend": self.backend,
            "backend_info": self.backend_info(),
            "batch_size": self._default_rows(),  # rows per UNet batch at the default settings
            "batch_size_option": self.batch_size,
            "threads": self.threads,
            "cache_dir": self.config.cache_dir,
            "strict": self.config.strict,
            "variant": self.config.variant,
            "fast_path": None if self.fast_path is None else self.fast_path.as_dict(),
            "scheduler": {k: v for k, v in m.scheduler_config.items() if not k.startswith("_")}
            | {"_class_name": m.scheduler_config.get("_class_name")},
            "defaults": asdict(m.defaults),
        }

    def backend_info(self) -> dict:
        """What runs the UNet (`noisefast.engine_fastpath.backend_info`): for ``auto`` every decision so far."""
        return backend_info(self.den, self.backend, getattr(self.model.arch, "auto_excluded", lambda: None)())

    def _default_rows(self) -> int | None:
        try:
            return self.batch_size_for(self.settings())
        except LimitError:  # the default size does not fit this device: the report says so by None
            return None

    # --- settings, shapes, conditions ---------------------------------------------------------------------
    def settings(self, **overrides) -> Settings:
        """The model's defaults with ``overrides`` (the `noisefast.params.SETTINGS` names), each checked once."""
        multiple, why = self.model.arch.size_multiple()
        if overrides.get("batch_size") is None:
            overrides["batch_size"] = self.batch_size
        return resolve_settings(self.defaults, multiple, why, **overrides)

    def _resolve(self, settings: Settings | None, overrides: dict) -> Settings:
        given = {k: v for k, v in overrides.items() if v is not None}
        if settings is None:
            return self.settings(**given)
        if given:
            raise InputError(f"pass settings= or the keywords {sorted(given)}, not both")
        if not isinstance(settings, Settings):
            raise InputError(f"settings must be a noisefast Settings, got {type(settings).__name__}")
        return settings

    def latent_shape(self, s: Settings) -> tuple[int, int, int]:
        """Per-sample latent shape (C, H/f, W/f) (FLUX: before the 2×2 packing, as its pipeline draws it)."""
        return self.model.arch.latent_shape(s.height, s.width)

    def batch_size_for(self, s: Settings) -> int:
        """Rows per UNet batch for ``s``, after checking a batch that size fits the device's memory.

        Default: the model's (``defaults.batch_size``) at up to its default image area, else ``DEFAULT_BATCH_SIZE``.
        """
        d = self.defaults
        rows = s.batch_size or (d.batch_size if s.height * s.width <= d.height * d.width else DEFAULT_BATCH_SIZE)
        check_fits_memory(rows, self.latent_shape(s), self.model.arch.memory_width, self.dtype, self.device,
                          cfg=self._with_negative(s))  # fmt: skip
        return rows

    def schedule(self, s: Settings) -> Schedule:
        """The denoise and inversion moves from the model's scheduler config: DDIM, or flow-matching Euler."""
        try:
            return self.model.arch.schedule(s.steps, s.inversion_steps, s.height, s.width)
        except ValueError as e:
            raise InputError(str(e)) from None

    def guidance_scales(self, s: Settings) -> tuple[float, float]:
        """(w_d, w_i) the sampler runs with: ``s``'s scales, except for models that embed the denoising guidance
        instead of running CFG (FLUX.1-dev: ``Condition.guidance`` = w_d, no CFG; `noisefast.architectures`)."""
        return self.model.arch.guidance_scales(s.guidance_scale, s.inversion_guidance_scale)

    def _with_negative(self, s: Settings) -> bool:
        """Whether some step runs the unconditional half (`noisefast.denoisers.guidance.needs_negative`)."""
        return needs_negative(*self.guidance_scales(s))

    def condition(self, prompt: str, negative_prompt: str | None = None, settings: Settings | None = None) -> Condition:
        """The condition (batch 1) for ``prompt``, encoded once and cached; the unconditional half is encoded
        only when some step of ``settings`` runs it (`needs_negative`)."""
        s = settings or self.settings()
        check_prompt(prompt, negative_prompt)
        key = (prompt, negative_prompt, s.height, s.width, self._with_negative(s))
        cond = self._conditions.get(key)
        if cond is None:
            cond = self.encode(prompt, negative_prompt, s)
            self._conditions[key] = cond
            if len(self._conditions) > CONDITION_CACHE_SIZE:
                self._conditions.popitem(last=False)
        else:
            self._conditions.move_to_end(key)
        return self.model.arch.condition(cond, s.guidance_scale)  # FLUX.1-dev: + the embedded guidance

    def encode(self, prompt: str | list[str], negative_prompt: str | None = None, s: Settings | None = None) -> Condition:
        """The condition for ``prompt`` or a list of prompts (one row each), encoded now (not cached)."""
        s = s or self.settings()
        with torch.no_grad():  # no_grad, not inference_mode: optimize may use the condition in autograd
            return self.model.encoder(prompt, negative_prompt, height=s.height, width=s.width,
                                      with_negative=self._with_negative(s), device=self.device)  # fmt: skip

    def _cond(self, prompt, negative_prompt, condition, s: Settings) -> Condition:
        if condition is not None:
            if prompt is not None:
                raise InputError("pass a prompt or condition=, not both")
            if not isinstance(condition, Condition) or condition.batch_size != 1:
                raise InputError("condition must be a noisefast Condition with batch 1")
            return self.model.arch.condition(condition.to(device=self.device), s.guidance_scale)
        if prompt is None:
            raise InputError("a prompt (or condition=) is required")
        return self.condition(prompt, negative_prompt, s)

    def noise(self, seeds: Iterable[int], s: Settings | None = None) -> torch.Tensor:  # [K, C, h, w]
        """What diffusers draws for each seed (CPU generator, the model's dtype), on the engine's device."""
        return self.scorer(s or self.settings()).noise(engine_seeds(seeds, unique=False))

    def scorer(self, s: Settings) -> RowScorer:
        """The row scorer for settings ``s`` (`noisefast.batching`): every method's rows, and select, screen and
        serve pack rows into it."""
        rows = self.batch_size_for(s)
        buckets = bucket_sizes(rows) if self.backend in SHAPE_SPECIALISED_BACKENDS else None
        chain = draw = None
        if self._graphs is not None and (chain := self._graphs.chain(s, rows)) is not None:
            buckets = (rows,)  # a captured graph has one batch size: every batch is padded to it
        if self.fast_path is not None and self.fast_path.pinned:
            from noisefast.hostnoise import SeedNoise

            draw = SeedNoise(self.latent_shape(s), rows, self.dtype, self.device)
        w_d, w_i = self.guidance_scales(s)
        return RowScorer(
            self.den, self.schedule(s), shape=self.latent_shape(s), guidance_scale=w_d, inversion_guidance_scale=w_i,
            dtype=self.dtype, device=self.device, buckets=buckets, chain=chain, draw=draw,
        )  # fmt: skip

    def _job(self, key, cond: Condition, seeds, latents, s: Settings) -> ScoreJob:
        """One prompt's rows: the seeds' noise, or the given latents [K, C, H, W] (exactly one of them)."""
        if latents is None:
            if seeds is None:
                raise InputError("pass exactly one of seeds or noise (latents=)")
            return ScoreJob(key, cond, engine_seeds([seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds))
        if seeds is not None:
            raise InputError("pass exactly one of seeds or noise (latents=)")
        latents = check_latents(latents, self.latent_shape(s), f"{s.height}×{s.width}")
        return ScoreJob(key, cond, tuple(range(len(latents))), latents.to(self.device))

    def _one_job(self, prompt, seeds, latents, noise, negative_prompt, condition, settings, overrides):
        s = self._resolve(settings, overrides)
        if noise is not None:
            if latents is not None:
                raise InputError("latents= and noise= are the same argument: pass one")
            latents = noise
        return s, self._job(0, self._cond(prompt, negative_prompt, condition, s), seeds, latents, s)

    # --- Definition 1, Algorithm 1 -----------------------------------------------------------------------
    def score(self, prompt: str | None = None, seeds=None, *, latents: torch.Tensor | None = None, noise=None,
              negative_prompt: str | None = None, condition: Condition | None = None, settings: Settings | None = None,
              progress: ProgressFn | None = None, **overrides) -> torch.Tensor:  # fmt: skip
        """s(ε) = cos(ε, I(D(ε))) for each seed's noise (or each row of ``latents``), in input order; [K] float32 CPU."""
        s, job = self._one_job(prompt, seeds, latents, noise, negative_prompt, condition, settings, overrides)
        parts = list(score_stream(self.scorer(s), [job], self.batch_size_for(s), progress=progress))
        return torch.cat([p.scores for p in parts])

    def select(self, prompt: str | None = None, seeds: Iterable[int] | None = None, *,
               negative_prompt: str | None = None, condition: Condition | None = None,
               progress: ProgressFn | None = None, settings: Settings | None = None, **overrides) -> Selection:  # fmt: skip
        """Algorithm 1 over ``seeds`` (default ``range(DEFAULT_NUM_CANDIDATES)``): every seed scored, sorted most →
        least stable. Ctrl-C raises `SelectionInterrupted` whose ``.result`` holds the finished rows."""
        if isinstance(prompt, (list, tuple)):
            raise InputError("select takes one prompt; use select_many for a list of prompts")
        s = self._resolve(settings, overrides)
        job = self._job(0, self._cond(prompt, negative_prompt, condition, s), candidate_seeds(seeds), None, s)
        return select_one(self.scorer(s), job, self.batch_size_for(s), progress=progress)

    def select_many(self, prompts: Sequence[str], seeds: Iterable[int] | None = None, *,
                    negative_prompt: str | None = None, progress: ProgressFn | None = None,
                    settings: Settings | None = None, **overrides) -> list[Selection]:  # fmt: skip
        """Algorithm 1 for each prompt over the same ``seeds``; all prompts' rows share UNet batches. One
        `Selection` per prompt, in order; Ctrl-C raises `SelectionInterrupted` (``.result``: the list so far)."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise InputError(f"select_many takes a list of prompts, got {type(prompts).__name__}")
        if not prompts:
            raise InputError("the prompt list is empty")
        s = self._resolve(settings, overrides)
        seeds = candidate_seeds(seeds)
        jobs = [self._job(i, self._cond(p, negative_prompt, None, s), seeds, None, s) for i, p in enumerate(prompts)]
        return select_many(self.scorer(s), jobs, self.batch_size_for(s), progress=progress)

    def score_stream(self, items: Iterable[tuple[Hashable, str, str | None, Sequence[int]]], *, settings: Settings,
                     progress: ProgressFn | None = None) -> Iterator[ScoredRows]:  # fmt: skip
        """Stream ``(key, prompt, negative_prompt, seeds)`` items through shared UNet batches (the screening job).

        ``items`` is read lazily, each prompt encoded once (cached); parts come back as batches finish, in row order.
        """
        jobs = (ScoreJob(key, self.condition(p, neg, settings), engine_seeds(seeds)) for key, p, neg, seeds in items)
        return score_stream(self.scorer(settings), jobs, self.batch_size_for(settings), progress=progress)

    # --- Algorithm 2 ---------------------------------------------------------------------------------------
    def optimize(self, prompt: str | None = None, seeds=None, *, latents: torch.Tensor | None = None, noise=None,
                 negative_prompt: str | None = None, condition: Condition | None = None, iterations: int | None = None,
                 lr: float | None = None, momentum: float | None = None, target: float | None = None,
                 renorm: bool | None = None, nesterov: bool = False, grad_clip: float | None = None,
                 checkpoint: bool = True, callback=None, progress: ProgressFn | None = None,
                 settings: Settings | None = None, **overrides) -> Optimization:  # fmt: skip
        """Minimise 1 − s(ε) for each seed's noise (or each row of ``latents``), each sample independently.

        Options (`noisefast.params.OPTIMIZE`): ``iterations`` (default 100), ``lr`` and ``renorm`` (default: the
        model's — `ModelDefaults.optimize_lr` / ``optimize_renorm``), ``momentum`` (0.5), ``target``, ``nesterov``,
        ``grad_clip``. The noise and its velocity are float32 whatever the model's dtype. ``callback(state)``
        returning False stops early (``stop_reason="callback"``); Ctrl-C raises `OptimizationInterrupted` whose
        ``.result`` keeps the best so far; ``progress(step, iterations + 1)`` after each step.
        """
        s, job = self._one_job(prompt, seeds, latents, noise, negative_prompt, condition, settings, overrides)
        o = OPTIMIZE
        iterations = o["iterations"].check(o["iterations"].default if iterations is None else iterations)
        lr = o["lr"].check(self.defaults.optimize_lr if lr is None else lr)
        momentum = o["momentum"].check(o["momentum"].default if momentum is None else momentum)
        target = None if target is None else o["target"].check(target)
        grad_clip = None if grad_clip is None else o["grad_clip"].check(grad_clip)
        for name, flag in (("renorm", renorm), ("nesterov", nesterov), ("checkpoint", checkpoint)):
            if flag is not None and not isinstance(flag, bool):
                raise InputError(f"{name} must be true or false, got {flag!r}")
        scorer = self.scorer(s)
        eps = (scorer.noise(job.seeds) if job.latents is None else job.latents).float()  # ε_0, as scoring draws it

        def step_callback(state):
            if progress is not None:
                progress(state.step + 1, state.steps + 1)
            return None if callback is None else callback(state)

        result = optimize_noise(
            self.den, scorer.sched, eps, job.cond, iterations, lr, momentum,
            guidance_scale=scorer.guidance_scale, inversion_guidance_scale=scorer.inversion_guidance_scale,
            target_stability=target, max_batch=self.batch_size_for(s), callback=step_callback, nesterov=nesterov,
            grad_clip=grad_clip, checkpoint=checkpoint,
            renorm=self.defaults.optimize_renorm if renorm is None else renorm,
        )  # fmt: skip
        out = Optimization(result=result, initial_noise=eps, seeds=None if job.latents is not None else tuple(job.seeds))
        if result.interrupted:
            raise OptimizationInterrupted(out)
        return out

    # --- generation and decoding -----------------------------------------------------------------------------
    def generate(self, prompt: str | None = None, seeds=None, *, latents: torch.Tensor | None = None, noise=None,
                 negative_prompt: str | None = None, condition: Condition | None = None, decode: bool = True,
                 progress: ProgressFn | None = None, step_progress: ProgressFn | None = None,
                 settings: Settings | None = None, **overrides) -> Generation:  # fmt: skip
        """D(ε): the denoising loop (DDIM, or flow Euler) from each seed's noise (or each row of ``latents``), decoded
        to images; ``progress(images_done, total)`` after each batch, ``step_progress(steps_done, steps_total)`` after
        each denoising step of each batch (steps_total = batches × steps)."""
        s, job = self._one_job(prompt, seeds, latents, noise, negative_prompt, condition, settings, overrides)
        scorer, eps, x0 = self.scorer(s), [], []
        rows = self.batch_size_for(s)
        on_move = None if step_progress is None else step_counter(step_progress, -(-len(job.seeds) // rows) * s.steps)
        for batch in row_batches([job], rows):
            e, x = scorer.denoise(batch, on_move)
            eps.append(e)
            x0.append(x)
            if progress is not None:
                progress(sum(len(t) for t in x0), len(job.seeds))
        x0 = torch.cat(x0)
        images = self.decode(x0) if decode else []
        return Generation(images=images, latents=x0, noise=torch.cat(eps),
                          seeds=None if job.latents is not None else tuple(job.seeds))  # fmt: skip

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[K, C, h, w] as the stock pipeline's ``latents=`` takes them (FLUX: packed 2×2; others: unchanged)."""
        return self.model.arch.pipeline_latents(latents)

    def decode(self, latents: torch.Tensor) -> list:  # latents [B, C, h, w] → B PIL images
        """Latents → images (`noisefast.decode`)."""
        return decode_latents(self.model, latents)


__all__ = ["Engine", "EngineConfig", "Generation", "Optimization", "Settings"]
