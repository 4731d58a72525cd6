"""`Engine`: a loaded model (SDXL, SDXL-Turbo, SD3/SD3.5, FLUX.1 or a built-in pixel model) and the four
algorithms over it.

    engine = Engine.from_pretrained("stabilityai/sdxl-turbo")       # or a local folder, or "builtin:digits"
    sel = engine.select("a red fox in snow", seeds=range(100))       # Algorithm 1 → .best_seed, .scores
    sels = engine.select(["a fox", "a cat"], seeds=range(100))       # several prompts share UNet batches
    img = engine.generate("a red fox in snow", seeds=[sel.best_seed]).images[0]
    opt = engine.optimize("a red fox in snow", seeds=[sel.worst_seed])  # Algorithm 2

Every method takes the per-call settings as keywords (``height``, ``width``, ``steps``,
``inversion_steps``, ``guidance_scale``, ``inversion_guidance_scale``, ``batch_size``) or a resolved
`Settings` (``settings=``); what is not given comes from the model's `ModelDefaults`. A prompt's
condition is encoded once and cached; ``condition=`` passes a precomputed one instead of a prompt.

The noise of a seed is what diffusers' ``StableDiffusionXLPipeline`` draws for
``generator=torch.Generator("cpu").manual_seed(seed)``, and `generate` denoises it with the DDIM schedule
built from the model's scheduler config, so a seed chosen here gives the same final latents in a stock
pipeline with ``DDIMScheduler.from_config(...)``. SD3 and FLUX models step the flow-matching Euler schedule of
their own ``FlowMatchEulerDiscreteScheduler`` and draw what ``StableDiffusion3Pipeline`` / ``FluxPipeline``
draw (FLUX: the [C, H/8, W/8] latent before the pipeline packs it); what differs per model is its
`noisefast.architectures` object (``model.arch``: latent shape, schedule, guidance scales, denoiser).

Batch sizes: rows go through the UNet ``batch_size`` at a time (default 8). For the shape-specialised
backends (``compile``, ``tensorrt``) a short last batch is padded to a power-of-two bucket
(`noisefast.batching.bucket_sizes`), so only ⌈log₂ batch_size⌉ + 1 shapes are ever compiled.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import asdict

import torch

from noisefast.batching import RowScorer, ScoredRows, ScoreJob, bucket_sizes, score_stream
from noisefast.decode import decode_latents
from noisefast.defaults import DEFAULT_BATCH_SIZE, DEFAULT_ITERATIONS, DEFAULT_MOMENTUM, ModelDefaults
from noisefast.denoisers.base import Condition
from noisefast.denoisers.fastpath import FastPathOptions
from noisefast.denoisers.guidance import needs_negative
from noisefast.engine_fastpath import GraphCache
from noisefast.engine_results import Generation, Optimization
from noisefast.errors import InputError
from noisefast.flow_schedule import Schedule
from noisefast.loading import LoadedModel, load_model
from noisefast.optimize import optimize_noise
from noisefast.progress import ProgressFn
from noisefast.seeds import check_seeds, noise_from_seeds
from noisefast.selection import Selection, select_many
from noisefast.settings import Settings, check_fits_memory, check_float, check_int, resolve_settings
from noisefast.stability import stability_score
from noisefast.transform import denoise

SHAPE_SPECIALISED_BACKENDS = ("compile", "tensorrt")
CONDITION_CACHE_SIZE = 256  # encoded prompts kept per engine


class Engine:
    """One loaded model and its denoiser; methods run the paper's algorithms over prompts and seeds."""

    def __init__(self, model: LoadedModel, *, backend: str = "torch", batch_size: int | None = None,
                 strict: bool = False, fast_path: FastPathOptions | None = None):  # fmt: skip
        from noisefast._ext import require_kernels

        if strict:  # a service must not run 3–5× slower on the pure-torch fallback without knowing
            require_kernels(model.device)
        self.model = model
        self.backend = backend
        self.fast_path = fast_path
        self.den = model.arch.make_denoiser(backend, fast_path)  # UNet (any backend, fast path) or SD3/FLUX transformer
        self._graphs = GraphCache(self) if fast_path is not None and fast_path.cuda_graph else None
        self.defaults: ModelDefaults = model.defaults
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size)
        self._conditions: OrderedDict[tuple, Condition] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        device=None,
        dtype=None,
        backend: str = "torch",
        variant: str | None = None,
        family: str | None = None,
        batch_size: int | None = None,
        strict: bool = False,
        fast_path: FastPathOptions | None = None,
    ) -> "Engine":
        """Load a hub id (local cache first), a local diffusers folder, or ``builtin:NAME``.

        ``device``: default CUDA when available, else CPU; ``dtype``: default fp16 on CUDA (fp32 for pixel
        models), fp32 on CPU; ``variant``: diffusers weight variant (e.g. ``"fp16"``); ``family``: force
        ``"sdxl"`` or ``"sdxl-turbo"`` defaults instead of detecting them; ``strict``: refuse to run when the
        fused kernels cannot (instead of falling back to the pure-torch reference with a warning); ``fast_path``:
        the GPU fast path (`noisefast.denoisers.fastpath.FastPathOptions`: channels_last, attention kernel, fused
        QKV, CUDA-graph replay of the whole scoring chain, pinned seed buffers).
        """
        return cls(load_model(model, device=device, dtype=dtype, variant=variant, family=family),
                   backend=backend, batch_size=batch_size, strict=strict, fast_path=fast_path)  # fmt: skip

    # --- settings, shapes, conditions ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def kind(self) -> str:
        return self.model.kind

    def settings(
        self,
        *,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        inversion_steps: int | None = None,
        guidance_scale: float | None = None,
        inversion_guidance_scale: float | None = None,
        batch_size: int | None = None,
    ) -> Settings:
        """The model's defaults with the given overrides, each checked (an `InputError` names the bad one)."""
        multiple, why = self.model.arch.size_multiple()
        return resolve_settings(
            self.defaults, multiple, why, height=height, width=width, steps=steps, inversion_steps=inversion_steps,
            guidance_scale=guidance_scale, inversion_guidance_scale=inversion_guidance_scale,
            batch_size=self.batch_size if batch_size is None else batch_size,
        )  # fmt: skip

    def _resolve(self, settings: Settings | None, overrides: dict) -> Settings:
        given = {k: v for k, v in overrides.items() if v is not None}
        if settings is not None:
            if given:
                raise InputError(f"pass settings= or the keywords {sorted(given)}, not both")
            if not isinstance(settings, Settings):
                raise InputError(f"settings must be a noisefast Settings, got {type(settings).__name__}")
            return settings
        return self.settings(**given)

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

    def condition(self, prompt: str, negative_prompt: str | None = None, settings: Settings | None = None) -> Condition:
        """The condition (batch 1) for ``prompt``, encoded once and cached; the unconditional half is encoded
        only when some step of ``settings`` runs it (`needs_negative`)."""
        s = settings or self.settings()
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InputError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
        key = (prompt, negative_prompt, s.height, s.width, self._with_negative(s))
        cond = self._conditions.get(key)
        if cond is None:
            cond = self.encode(prompt, negative_prompt, s)  # no_grad, not inference_mode: optimize may use it
            self._conditions[key] = cond
            if len(self._conditions) > CONDITION_CACHE_SIZE:
                self._conditions.popitem(last=False)
        else:
            self._conditions.move_to_end(key)
        return self.model.arch.condition(cond, s.guidance_scale)  # FLUX.1-dev: + the embedded guidance

    def encode(self, prompt: str | list[str], negative_prompt: str | None = None, s: Settings | None = None) -> Condition:
        """The condition for ``prompt`` or a list of prompts (one row each), encoded now (not cached)."""
        s = s or self.settings()
        with torch.no_grad():
            return self.model.encoder(prompt, negative_prompt, height=s.height, width=s.width,
                                      with_negative=self._with_negative(s), device=self.device)  # fmt: skip

    def _with_negative(self, s: Settings) -> bool:
        """Whether some step runs the unconditional half: denoising with CFG (w > 1), or an inversion mix other
        than the conditional one (w_i ≠ 1; `noisefast.denoisers.guidance.needs_negative`)."""
        return needs_negative(*self.guidance_scales(s))

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
        s = s or self.settings()
        return noise_from_seeds(_seeds(seeds), self.latent_shape(s), "cpu", dtype=self.dtype, device=self.device)

    def _noise_or_seeds(self, seeds, noise, s: Settings) -> tuple[torch.Tensor, tuple[int, ...] | None]:
        if (seeds is None) == (noise is None):
            raise InputError("pass exactly one of seeds or noise")
        if noise is None:
            seeds = tuple(_seeds([seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds))
            return self.noise(seeds, s), seeds
        expected = self.latent_shape(s)
        if not isinstance(noise, torch.Tensor) or noise.ndim != 4 or tuple(noise.shape[1:]) != expected:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise InputError(f"noise must be [B, {', '.join(map(str, expected))}] for {s.height}×{s.width}, got {got}")
        if not noise.is_floating_point() or not bool(torch.isfinite(noise).all()):
            raise InputError("noise must be a floating-point tensor of finite values")
        return noise.to(self.device), None

    def scorer(self, s: Settings) -> RowScorer:
        """The row scorer for settings ``s`` (`noisefast.batching`): what select, screen and serve pack rows into."""
        rows = self.batch_size_for(s)
        buckets = bucket_sizes(rows) if self.backend in SHAPE_SPECIALISED_BACKENDS else None
        chain = draw = None
        if self._graphs is not None and (chain := self._graphs.chain(s, rows)) is not None:
            buckets = (rows,)  # a captured graph has one batch size: every batch is padded to it
        if self.fast_path is not None and self.fast_path.pinned and self.device.type == "cuda":
            from noisefast.hostnoise import SeedNoise

            draw = SeedNoise(self.latent_shape(s), rows, self.dtype, self.device)
        w_d, w_i = self.guidance_scales(s)
        return RowScorer(
            self.den, self.schedule(s), shape=self.latent_shape(s), guidance_scale=w_d, inversion_guidance_scale=w_i,
            dtype=self.dtype, device=self.device, buckets=buckets, chain=chain, draw=draw,
        )  # fmt: skip

    # --- Definition 1, Algorithm 1 -----------------------------------------------------------------------
    def score(self, prompt: str | None = None, seeds=None, *, noise=None, negative_prompt: str | None = None,
              condition: Condition | None = None, settings: Settings | None = None, height: int | None = None,
              width: int | None = None, steps: int | None = None, inversion_steps: int | None = None,
              guidance_scale: float | None = None, inversion_guidance_scale: float | None = None,
              batch_size: int | None = None) -> torch.Tensor:  # fmt: skip
        """s(ε) = cos(ε, I(D(ε))) for each seed's noise (or each row of ``noise``), in input order; [K] float32 CPU."""
        s = self._resolve(settings, dict(height=height, width=width, steps=steps, inversion_steps=inversion_steps,
                                         guidance_scale=guidance_scale, inversion_guidance_scale=inversion_guidance_scale,
                                         batch_size=batch_size))  # fmt: skip
        cond = self._cond(prompt, negative_prompt, condition, s)
        if (seeds is None) == (noise is None):
            raise InputError("pass exactly one of seeds or noise")
        if noise is None:
            seeds = _seeds([seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds)
            parts = list(score_stream(self.scorer(s), [ScoreJob(0, cond, seeds)], self.batch_size_for(s)))
            return torch.cat([p.scores for p in parts])
        eps, _ = self._noise_or_seeds(None, noise, s)
        with torch.inference_mode():
            scores = stability_score(self.den, self.schedule(s), eps.to(self.dtype), cond, *self.guidance_scales(s),
                                     max_batch=self.batch_size_for(s))  # fmt: skip
        return scores.float().cpu()

    def select(self, prompt: str | Sequence[str] | None = None, seeds: Iterable[int] = range(100), *,
               negative_prompt: str | None = None, condition: Condition | None = None,
               progress: ProgressFn | None = None, settings: Settings | None = None, height: int | None = None,
               width: int | None = None, steps: int | None = None, inversion_steps: int | None = None,
               guidance_scale: float | None = None, inversion_guidance_scale: float | None = None,
               batch_size: int | None = None) -> Selection | list[Selection]:  # fmt: skip
        """Algorithm 1 over ``seeds``: every seed scored, sorted most → least stable.

        ``prompt`` may be a list: every prompt's candidates then share UNet batches and a list of
        `Selection` comes back, one per prompt. Ctrl-C raises `noisefast.selection.SelectionInterrupted`
        whose ``.result`` holds the finished rows.
        """
        s = self._resolve(settings, dict(height=height, width=width, steps=steps, inversion_steps=inversion_steps,
                                         guidance_scale=guidance_scale, inversion_guidance_scale=inversion_guidance_scale,
                                         batch_size=batch_size))  # fmt: skip
        seeds = _seeds(seeds)
        many = isinstance(prompt, (list, tuple))
        prompts = list(prompt) if many else [prompt]
        if many and not prompts:
            raise InputError("the prompt list is empty")
        jobs = [ScoreJob(i, self._cond(p, negative_prompt, condition, s), seeds) for i, p in enumerate(prompts)]
        sels = select_many(self.scorer(s), jobs, self.batch_size_for(s), progress=progress)
        return sels if many else sels[0]

    def score_stream(self, items: Iterable[tuple[Hashable, str, Sequence[int]]], *, settings: Settings,
                     negative_prompt: str | None = None, progress: ProgressFn | None = None) -> Iterator[ScoredRows]:  # fmt: skip
        """Stream ``(key, prompt, seeds)`` items through shared UNet batches (`noisefast.batching.score_stream`).

        ``items`` is read lazily, each prompt encoded once (cached); parts come back as batches finish.
        """
        jobs = (ScoreJob(key, self.condition(p, negative_prompt, settings), list(seeds)) for key, p, seeds in items)
        return score_stream(self.scorer(settings), jobs, self.batch_size_for(settings), progress=progress)

    # --- Algorithm 2 ---------------------------------------------------------------------------------------
    def optimize(self, prompt: str | None = None, seeds=None, *, noise=None, negative_prompt: str | None = None,
                 condition: Condition | None = None, iterations: int = DEFAULT_ITERATIONS, lr: float | None = None,
                 momentum: float = DEFAULT_MOMENTUM, target: float | None = None, renorm: bool | None = None,
                 nesterov: bool = False, grad_clip: float | None = None, checkpoint: bool = True, callback=None,
                 progress: ProgressFn | None = None, settings: Settings | None = None, height: int | None = None,
                 width: int | None = None, steps: int | None = None, inversion_steps: int | None = None,
                 guidance_scale: float | None = None, inversion_guidance_scale: float | None = None,
                 batch_size: int | None = None) -> Optimization:  # fmt: skip
        """Minimise 1 − s(ε) for each seed's noise (or each row of ``noise``), each sample independently.

        ``lr`` and ``renorm`` default to the model's (`ModelDefaults.optimize_lr` / ``optimize_renorm``: the
        paper's lr 100 without renormalisation for SDXL; the built-in model's card says its own). The noise
        and its velocity are float32 whatever the model's dtype. Ctrl-C ends the run early and keeps the
        best so far; ``progress(step, iterations)`` after each step.
        """
        s = self._resolve(settings, dict(height=height, width=width, steps=steps, inversion_steps=inversion_steps,
                                         guidance_scale=guidance_scale, inversion_guidance_scale=inversion_guidance_scale,
                                         batch_size=batch_size))  # fmt: skip
        iterations = check_int("iterations", iterations, 1, 100_000)
        lr = check_float("lr", self.defaults.optimize_lr if lr is None else lr, 0.0, 1e6)
        momentum = check_float("momentum", momentum, 0.0, 0.999)
        target = None if target is None else check_float("target", target, -1.0, 1.0)
        grad_clip = None if grad_clip is None else check_float("grad_clip", grad_clip, 0.0, 1e12)
        cond = self._cond(prompt, negative_prompt, condition, s)
        eps, seeds = self._noise_or_seeds(seeds, noise, s)
        user_callback = callback

        def step_callback(state):
            if progress is not None:
                progress(state.step + 1, state.steps + 1)
            return None if user_callback is None else user_callback(state)

        w_d, w_i = self.guidance_scales(s)
        result = optimize_noise(
            self.den, self.schedule(s), eps.float(), cond, iterations, lr, momentum,
            guidance_scale=w_d, inversion_guidance_scale=w_i,
            target_stability=target, max_batch=self.batch_size_for(s), callback=step_callback, nesterov=nesterov,
            grad_clip=grad_clip, checkpoint=checkpoint,
            renorm=self.defaults.optimize_renorm if renorm is None else bool(renorm),
        )  # fmt: skip
        return Optimization(result=result, initial_noise=eps.float(), seeds=seeds)

    # --- generation and decoding -----------------------------------------------------------------------------
    def generate(self, prompt: str | None = None, seeds=None, *, noise=None, negative_prompt: str | None = None,
                 condition: Condition | None = None, decode: bool = True, settings: Settings | None = None,
                 height: int | None = None, width: int | None = None, steps: int | None = None,
                 inversion_steps: int | None = None, guidance_scale: float | None = None,
                 inversion_guidance_scale: float | None = None, batch_size: int | None = None) -> Generation:  # fmt: skip
        """D(ε): the denoising loop (DDIM or flow Euler) from each seed's noise (or ``noise``), decoded to PIL images."""
        s = self._resolve(settings, dict(height=height, width=width, steps=steps, inversion_steps=inversion_steps,
                                         guidance_scale=guidance_scale, inversion_guidance_scale=inversion_guidance_scale,
                                         batch_size=batch_size))  # fmt: skip
        cond = self._cond(prompt, negative_prompt, condition, s)
        eps, seeds = self._noise_or_seeds(seeds, noise, s)
        with torch.inference_mode():
            x0 = denoise(self.den, self.schedule(s), eps.to(self.dtype), cond, self.guidance_scales(s)[0],
                         max_batch=self.batch_size_for(s))  # fmt: skip
        images = self.decode(x0) if decode else []
        return Generation(images=images, latents=x0, noise=eps, seeds=seeds)

    def decode(self, latents: torch.Tensor) -> list:  # latents [B, C, h, w] → B PIL images
        """Latents → images (`noisefast.decode`)."""
        return decode_latents(self.model, latents)

    def describe(self) -> dict:
        """The model and engine facts a report records."""
        m = self.model
        return {
            "model": m.source,
            "folder": str(m.folder),
            "kind": m.kind,
            "family": m.defaults.family,
            "sampler": m.arch.sampler,  # "DDIM" or "Euler (flow matching)"
            "guidance": m.arch.guidance,  # the denoising scale: "classifier-free" or "embedded" (FLUX.1-dev)
            "device": str(m.device),
            "dtype": str(m.dtype).replace("torch.", ""),
            "backend": self.backend,
            "scheduler": {k: v for k, v in m.scheduler_config.items() if not k.startswith("_")}
            | {"_class_name": m.scheduler_config.get("_class_name")},
            "defaults": asdict(m.defaults),
        }


def _seeds(seeds) -> list[int]:
    """`check_seeds` with its errors as `InputError` (the Engine's one error type for bad arguments)."""
    try:
        return check_seeds(seeds)
    except (TypeError, ValueError) as e:
        raise InputError(str(e)) from None


__all__ = ["Engine", "Generation", "Optimization", "Settings"]
