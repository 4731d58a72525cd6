"""`Engine`: a model id or folder plus a prompt in, stability scores, the best noise and images out.

    engine = Engine.from_pretrained("stabilityai/sdxl-turbo")       # or a local folder, or "builtin:digits"
    sel = engine.select("a red fox in snow", seeds=range(100))       # Algorithm 1 → .best_seed, .scores
    img = engine.generate("a red fox in snow", seeds=[sel.best_seed]).images[0]
    opt = engine.optimize("a red fox in snow", seed=sel.worst_seed)  # Algorithm 2

Every method takes the per-call settings (``height``, ``width``, ``steps``, ``inversion_steps``,
``guidance_scale``, ``inversion_guidance_scale``, ``batch_size``); what is not given comes from the
model's defaults (`noisefast.loading.ModelDefaults`). The noise of a seed is what diffusers'
``StableDiffusionXLPipeline`` draws for ``generator=torch.Generator("cpu").manual_seed(seed)`` and
`generate` denoises it with the DDIM schedule built from the model's scheduler config, so a seed chosen
here gives the same final latents in a stock pipeline with ``DDIMScheduler.from_config(...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from noisefast.denoisers.base import Condition
from noisefast.denoisers.guidance import do_classifier_free_guidance
from noisefast.loading import LoadedModel, ModelDefaults, NoisefastError, load_model
from noisefast.optimize import DEFAULT_MOMENTUM, DEFAULT_STEPS, OptimizeResult, optimize_noise
from noisefast.schedule import DDIMSchedule
from noisefast.seeds import check_seeds, noise_from_seeds
from noisefast.stability import Selection, select_noise, stability_score
from noisefast.transform import denoise

PIXEL_VIEW_SIZE = 128  # pixel models' samples are upscaled (nearest neighbour) to at least this for viewing


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one call (model defaults with the call's overrides)."""

    height: int
    width: int
    steps: int
    inversion_steps: int
    guidance_scale: float
    inversion_guidance_scale: float
    batch_size: int | None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Generation:
    """Images and the final latents x₀ they were decoded from, one per noise."""

    images: list  # list[PIL.Image.Image]
    latents: torch.Tensor  # [B, C, h, w] final latents (before decoding)
    noise: torch.Tensor  # [B, C, h, w] initial noise ε
    seeds: tuple[int, ...] | None


@dataclass(frozen=True, eq=False)
class Optimization:
    """Algorithm 2's outcome for each noise (see `noisefast.optimize.OptimizeResult`), with where it started."""

    result: OptimizeResult
    initial_noise: torch.Tensor  # [B, C, h, w] ε_0, float32
    seeds: tuple[int, ...] | None

    @property
    def best_noise(self) -> torch.Tensor:  # [B, C, h, w] per sample the most stable ε seen
        return self.result.best_noise

    @property
    def noise(self) -> torch.Tensor:  # [B, C, h, w] the final ε
        return self.result.noise

    @property
    def history(self) -> torch.Tensor:  # [R, B] s(ε_k), k = 0 … R−1
        return self.result.history

    @property
    def steps_run(self) -> int:
        return self.result.steps_run

    @property
    def interrupted(self) -> bool:
        return self.result.interrupted

    def save_noise(self, path) -> None:
        """``initial``, ``best`` and ``final`` noise [B, C, h, w] (float32) as safetensors, seeds in the metadata."""
        from safetensors.torch import save_file

        tensors = {"initial": self.initial_noise, "best": self.result.best_noise, "final": self.result.noise}
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path),
                  metadata={"seeds": ",".join(map(str, self.seeds or ()))})  # fmt: skip


def make_denoiser(unet, backend: str = "torch"):
    """The `Denoiser` over ``unet`` for ``backend`` (`noisefast.denoisers.backends`); unusable → `NoisefastError`."""
    try:
        from noisefast.denoisers.backends import BackendUnavailableError, make_denoiser as make_backend
    except ImportError:  # an installation without the compiled backends: eager torch only
        if backend != "torch":
            raise NoisefastError(f"backend {backend!r} is not available in this installation; use 'torch'") from None
        from noisefast.denoisers.unet import UNetDenoiser

        return UNetDenoiser(unet)
    try:
        return make_backend(unet, backend=backend)
    except BackendUnavailableError as e:
        raise NoisefastError(str(e)) from e


class Engine:
    """One loaded model (SDXL, SDXL-Turbo or a built-in pixel model) and its denoiser."""

    def __init__(self, model: LoadedModel, *, backend: str = "torch", batch_size: int | None = None):
        self.model = model
        self.backend = backend
        self.den = make_denoiser(model.unet, backend)
        self.defaults: ModelDefaults = model.defaults
        self.batch_size = batch_size

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
    ) -> "Engine":
        """Load a hub id (local cache first), a local diffusers folder, or ``builtin:NAME``.

        ``device``: default CUDA when available, else CPU; ``dtype``: default fp16 on CUDA (fp32 for pixel
        models), fp32 on CPU; ``variant``: diffusers weight variant (e.g. ``"fp16"``); ``family``: force
        ``"sdxl"`` or ``"sdxl-turbo"`` defaults instead of detecting them.
        """
        return cls(load_model(model, device=device, dtype=dtype, variant=variant, family=family),
                   backend=backend, batch_size=batch_size)  # fmt: skip

    # --- settings, shapes, conditions -------------------------------------------------------------------
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
        """Defaults with the given overrides; sizes must fit the model (multiples of its spatial factor)."""
        d = self.defaults
        pick = lambda v, default: default if v is None else v  # noqa: E731
        s = Settings(
            height=pick(height, d.height),
            width=pick(width, d.width),
            steps=pick(steps, d.steps),
            inversion_steps=pick(inversion_steps, d.inversion_steps),
            guidance_scale=float(pick(guidance_scale, d.guidance_scale)),
            inversion_guidance_scale=float(pick(inversion_guidance_scale, d.inversion_guidance_scale)),
            batch_size=pick(batch_size, self.batch_size),
        )
        for name in ("height", "width", "steps", "inversion_steps"):
            v = getattr(s, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise NoisefastError(f"{name} must be a positive integer, got {v!r}")
        multiple = self._size_multiple()
        why = (f"this model's UNet halves the image {int(math.log2(multiple))} time(s)" if self.kind == "pixel"
               else f"the VAE maps {multiple}×{multiple} pixels to one latent")  # fmt: skip
        for name in ("height", "width"):
            if getattr(s, name) % multiple:
                raise NoisefastError(f"{name}={getattr(s, name)} is not a multiple of {multiple} ({why})")
        for name in ("guidance_scale", "inversion_guidance_scale"):
            if not math.isfinite(getattr(s, name)):
                raise NoisefastError(f"{name} must be finite, got {getattr(s, name)}")
        if s.batch_size is not None and (isinstance(s.batch_size, bool) or not isinstance(s.batch_size, int) or s.batch_size < 1):
            raise NoisefastError(f"batch_size must be a positive integer, got {s.batch_size!r}")
        return s

    def _size_multiple(self) -> int:
        if self.kind == "pixel":  # no VAE: the UNet's downsampling sets the granularity
            return 2 ** (len(self.model.unet.config.block_out_channels) - 1)
        return self.model.spatial_factor

    def latent_shape(self, s: Settings) -> tuple[int, int, int]:
        """Per-sample latent shape (C, H/f, W/f)."""
        f = self.model.spatial_factor
        return (int(self.model.unet.config.in_channels), s.height // f, s.width // f)

    def schedule(self, s: Settings) -> DDIMSchedule:
        """The DDIM schedule (denoise and inversion moves) from the model's scheduler config."""
        return DDIMSchedule.from_config(self.model.scheduler_config, s.steps, s.inversion_steps)

    def encode(self, prompt, negative_prompt: str | None = None, s: Settings | None = None) -> Condition:
        """The condition for ``prompt`` (a string, or a list for a batch); the unconditional half is encoded
        only when some guidance scale of ``s`` runs classifier-free guidance (> 1)."""
        s = s or self.settings()
        with_negative = do_classifier_free_guidance(s.guidance_scale) or do_classifier_free_guidance(
            s.inversion_guidance_scale
        )
        return self.model.encoder(
            prompt, negative_prompt, height=s.height, width=s.width, with_negative=with_negative, device=self.device
        )

    def noise(self, seeds: Iterable[int], s: Settings | None = None) -> torch.Tensor:  # [K, C, h, w]
        """What diffusers draws for each seed (CPU generator, the model's dtype), on the engine's device."""
        s = s or self.settings()
        return noise_from_seeds(check_seeds(seeds), self.latent_shape(s), "cpu", dtype=self.dtype, device=self.device)

    def _noise_or_seeds(self, seeds, noise, s: Settings) -> tuple[torch.Tensor, tuple[int, ...] | None]:
        if (seeds is None) == (noise is None):
            raise NoisefastError("pass exactly one of seeds or noise")
        if noise is None:
            seeds = tuple(check_seeds([seeds] if isinstance(seeds, int) else seeds))
            return self.noise(seeds, s), seeds
        expected = self.latent_shape(s)
        if not isinstance(noise, torch.Tensor) or noise.ndim != 4 or tuple(noise.shape[1:]) != expected:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise NoisefastError(f"noise must be [B, {', '.join(map(str, expected))}] for {s.height}×{s.width}, got {got}")
        return noise.to(self.device), None

    # --- Definition 1, Algorithm 1 -------------------------------------------------------------------------
    def score(self, prompt: str, seeds=None, *, noise=None, negative_prompt: str | None = None, **settings) -> torch.Tensor:
        """s(ε) = cos(ε, I(D(ε))) for each seed's noise (or each row of ``noise``), in input order; [K] float32 CPU."""
        s = self.settings(**settings)
        eps, _ = self._noise_or_seeds(seeds, noise, s)
        cond = self.encode(prompt, negative_prompt, s)
        with torch.inference_mode():
            scores = stability_score(
                self.den, self.schedule(s), eps, cond, s.guidance_scale, s.inversion_guidance_scale, max_batch=s.batch_size
            )
        return scores.float().cpu()

    def select(
        self,
        prompt: str,
        seeds: Iterable[int] = range(100),
        *,
        negative_prompt: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        **settings,
    ) -> Selection:
        """Algorithm 1 over ``seeds``: every seed scored, sorted most → least stable.

        Ctrl-C raises `noisefast.stability.SelectionInterrupted` whose ``.result`` holds the finished chunks.
        """
        s = self.settings(**settings)
        cond = self.encode(prompt, negative_prompt, s)
        return select_noise(
            self.den, self.schedule(s), cond, seeds=check_seeds(seeds), shape=self.latent_shape(s),
            guidance_scale=s.guidance_scale, inversion_guidance_scale=s.inversion_guidance_scale,
            generator_device="cpu", dtype=self.dtype, device=self.device, max_batch=s.batch_size, progress=progress,
        )  # fmt: skip

    # --- Algorithm 2 ------------------------------------------------------------------------------------------
    def optimize(
        self,
        prompt: str,
        seeds=None,
        *,
        noise=None,
        negative_prompt: str | None = None,
        iterations: int = DEFAULT_STEPS,
        lr: float | None = None,
        momentum: float = DEFAULT_MOMENTUM,
        target: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        **options,
    ) -> Optimization:
        """Minimise 1 − s(ε) for each seed's noise (or each row of ``noise``), each sample independently.

        ``options``: the per-call settings (``steps``, ``guidance_scale``, ...) and `optimize_noise`'s
        own (``grad_clip``, ``renorm``, ``nesterov``, ``checkpoint``, ``callback``). The noise and its
        velocity are float32 whatever the model's dtype. Ctrl-C ends the run early and keeps the best so far.
        ``lr`` and ``renorm`` default to the model's (`ModelDefaults.optimize_lr` / ``optimize_renorm``:
        the paper's lr 100 without renormalisation for SDXL; the built-in model's card says its own).
        """
        lr = self.defaults.optimize_lr if lr is None else lr
        if options.get("renorm") is None:
            options["renorm"] = self.defaults.optimize_renorm
        settings = {k: options.pop(k) for k in list(options) if k in Settings.__dataclass_fields__}
        s = self.settings(**settings)
        eps, seeds = self._noise_or_seeds(seeds, noise, s)
        eps = eps.float()
        cond = self.encode(prompt, negative_prompt, s)
        user_callback = options.pop("callback", None)

        def callback(state):
            if progress is not None:
                progress(state.step + 1, state.steps + 1)
            return None if user_callback is None else user_callback(state)

        result = optimize_noise(
            self.den, self.schedule(s), eps, cond, iterations, lr, momentum,
            guidance_scale=s.guidance_scale, inversion_guidance_scale=s.inversion_guidance_scale,
            target_stability=target, max_batch=s.batch_size, callback=callback, **options,
        )  # fmt: skip
        return Optimization(result=result, initial_noise=eps, seeds=seeds)

    # --- generation and decoding -------------------------------------------------------------------------
    def generate(
        self, prompt: str, seeds=None, *, noise=None, negative_prompt: str | None = None, decode: bool = True, **settings
    ) -> Generation:
        """D(ε): the DDIM denoising loop from each seed's noise (or ``noise``), decoded to PIL images."""
        s = self.settings(**settings)
        eps, seeds = self._noise_or_seeds(seeds, noise, s)
        cond = self.encode(prompt, negative_prompt, s)
        with torch.inference_mode():
            x0 = denoise(self.den, self.schedule(s), eps.to(self.dtype), cond, s.guidance_scale, max_batch=s.batch_size)
        images = self.decode(x0) if decode else []
        return Generation(images=images, latents=x0, noise=eps, seeds=seeds)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> list:  # latents [B, C, h, w] → B PIL images
        """Latents → images: the VAE for SDXL (fp32 when its fp16 overflows), [-1, 1] → 8-bit for pixel models."""
        if self.kind == "pixel":
            return [_pixel_image(x) for x in latents.float().cpu()]
        vae, pipe = self.model.vae, self.model.pipe
        images = []
        for lat in latents.split(1):  # one at a time: a 1024² VAE decode is the memory peak of a run
            lat = lat.to(device=vae.device, dtype=vae.dtype)
            mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                c = lat.shape[1]
                mean_t = torch.tensor(mean, device=lat.device, dtype=lat.dtype).view(1, c, 1, 1)
                std_t = torch.tensor(std, device=lat.device, dtype=lat.dtype).view(1, c, 1, 1)
                lat = lat * std_t / vae.config.scaling_factor + mean_t
            else:
                lat = lat / vae.config.scaling_factor
            image = vae.decode(lat, return_dict=False)[0]
            images += pipe.image_processor.postprocess(image.float(), output_type="pil")
        return images

    def describe(self) -> dict:
        """The model and engine facts a report records."""
        m = self.model
        return {
            "model": m.source,
            "folder": str(m.folder),
            "kind": m.kind,
            "family": m.defaults.family,
            "device": str(m.device),
            "dtype": str(m.dtype).replace("torch.", ""),
            "backend": self.backend,
            "scheduler": {k: v for k, v in m.scheduler_config.items() if not k.startswith("_")}
            | {"_class_name": m.scheduler_config.get("_class_name")},
            "defaults": asdict(m.defaults),
        }


def _pixel_image(x: torch.Tensor) -> Image.Image:  # x [C, H, W] in [-1, 1]
    """A pixel-space sample as an 8-bit image, upscaled nearest-neighbour to at least PIXEL_VIEW_SIZE."""
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    img = Image.fromarray(u8[0], "L") if u8.shape[0] == 1 else Image.fromarray(np.moveaxis(u8[:3], 0, -1), "RGB")
    scale = max(1, math.ceil(PIXEL_VIEW_SIZE / max(img.size)))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


__all__ = ["Engine", "Generation", "NoisefastError", "Optimization", "Settings", "make_denoiser"]
