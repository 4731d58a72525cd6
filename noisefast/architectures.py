"""What the Engine needs to know about a model's network and sampler, in one object per architecture.

The Engine (`noisefast.pipeline`) is the same for every model; what differs is answered here:

=====================  ===============================================  ===============================================
question               `UNetArchitecture` (SDXL, pixel models)          `FlowArchitecture` (SD3/SD3.5, FLUX.1)
=====================  ===============================================  ===============================================
latent shape           (UNet in_channels, H/f, W/f)                     (latent channels, H/8, W/8) — FLUX's latent
                                                                        *before* the pipeline packs it 2×2
size granularity       the VAE factor (or the UNet's downsampling)      VAE factor × 2 (SD3's patches, FLUX's packing)
schedule               `DDIMSchedule` from the scheduler config         `FlowSchedule`: the pipeline's σ grid and its
                                                                        resolution-dependent μ
guidance scales        (w_d, w_i) as given                              the same, except FLUX.1-dev: w_d is the
                                                                        *embedded* guidance (`Condition.guidance`),
                                                                        no CFG
denoiser               `UNetDenoiser` on any backend / fast path        `SD3Denoiser` / `FluxDenoiser` (torch backend)
=====================  ===============================================  ===============================================

The noise of a seed is the same for all (`noisefast.seeds`: one ``[1, C, h, w]`` CPU draw per seed), which is what
``StableDiffusionXLPipeline``, ``StableDiffusion3Pipeline`` and ``FluxPipeline`` (before ``_pack_latents``) draw.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from noisefast.denoisers.base import Condition
from noisefast.errors import BackendUnavailableError
from noisefast.flow_schedule import FlowSchedule, Schedule, resolve_flow_config, shift_for
from noisefast.schedule import DDIMSchedule


class UNetArchitecture:
    """A diffusers ``UNet2DConditionModel`` stepped with DDIM: SDXL (``kind="sdxl"``) or a pixel model."""

    sampler = "DDIM"
    guidance = "classifier-free"  # what the denoising guidance scale means

    def __init__(self, kind: str, unet, scheduler_config: dict, spatial_factor: int):
        self.kind, self.unet, self.scheduler_config, self.spatial_factor = kind, unet, scheduler_config, spatial_factor

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.spatial_factor
        return (int(self.unet.config.in_channels), height // f, width // f)

    def size_multiple(self) -> tuple[int, str]:
        """(multiple image sizes must be of, why)."""
        if self.kind == "pixel":  # no VAE: the UNet's downsampling sets the granularity
            m = 2 ** (len(self.unet.config.block_out_channels) - 1)
            return m, f"this model's UNet halves the image {int(math.log2(m))} time(s)"
        f = self.spatial_factor
        return f, f"the VAE maps {f}×{f} pixels to one latent"

    @property
    def memory_width(self) -> int:
        """Channels per latent pixel of the network's first block (for `noisefast.settings.check_fits_memory`)."""
        return int(self.unet.config.block_out_channels[0])

    def schedule(self, steps: int, inversion_steps: int, height: int, width: int) -> Schedule:
        del height, width  # DDIM's timesteps do not depend on the image size
        return DDIMSchedule.from_config(self.scheduler_config, steps, inversion_steps)

    def guidance_scales(self, guidance_scale: float, inversion_guidance_scale: float) -> tuple[float, float]:
        """(w_d, w_i) for `noisefast.transform`: classifier-free guidance as given."""
        return guidance_scale, inversion_guidance_scale

    def condition(self, cond: Condition, guidance_scale: float) -> Condition:
        del guidance_scale
        return cond

    def pipeline_latents(self, latents):  # [K, C, h, w] → what the stock pipeline's latents= takes: the same
        return latents

    def make_denoiser(self, backend: str, fast_path, *, cache_dir=None, threads: int | None = None):
        from noisefast.engine_fastpath import make_engine_denoiser

        return make_engine_denoiser(self.unet, backend, fast_path, cache_dir=cache_dir, threads=threads)


class FlowArchitecture:
    """A flow-matching transformer stepped with Euler moves: SD3/SD3.5 (``kind="sd3"``) or FLUX.1 (``"flux"``)."""

    def __init__(self, kind: str, transformer, scheduler_config: dict, spatial_factor: int):
        if kind not in ("sd3", "flux"):
            raise ValueError(f"flow architecture kind must be 'sd3' or 'flux', got {kind!r}")
        self.kind, self.transformer, self.scheduler_config = kind, transformer, scheduler_config
        self.spatial_factor = spatial_factor
        cfg = transformer.config
        # SD3 embeds p×p latent patches; FLUX's pipeline packs 2×2 patches (its transformer has patch_size 1)
        self.patch = int(cfg.patch_size) if kind == "sd3" else 2
        self.latent_channels = int(cfg.in_channels) if kind == "sd3" else int(cfg.in_channels) // 4
        self.guidance_embeds = kind == "flux" and bool(cfg.guidance_embeds)
        self.guidance = "embedded" if self.guidance_embeds else "classifier-free"

    sampler = "Euler (flow matching)"

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.spatial_factor
        return (self.latent_channels, height // f, width // f)

    def size_multiple(self) -> tuple[int, str]:
        m = self.spatial_factor * self.patch
        what = f"takes {self.patch}×{self.patch} latent patches" if self.kind == "sd3" else "packs 2×2 latent patches"
        f = self.spatial_factor
        return m, f"the VAE maps {f}×{f} pixels to one latent and the transformer {what}"

    def max_side(self) -> int | None:
        """The largest image side the transformer can place (SD3's learned position table), None when unbounded."""
        size = getattr(self.transformer.config, "pos_embed_max_size", None) if self.kind == "sd3" else None
        return None if size is None else int(size) * self.patch * self.spatial_factor

    @property
    def memory_width(self) -> int:
        cfg = self.transformer.config
        return max(1, int(cfg.num_attention_heads) * int(cfg.attention_head_dim) // self.patch**2)

    def schedule(self, steps: int, inversion_steps: int, height: int, width: int) -> Schedule:
        """The pipeline's Euler schedule at this size: σ grid and μ as `StableDiffusion3Pipeline` / `FluxPipeline`.

        SD3: ``set_timesteps(n, mu=μ)`` with μ = calculate_shift((h/p)·(w/p)) only under dynamic shifting;
        FLUX: ``set_timesteps(sigmas=linspace(1, 1/n, n), mu=μ)`` with μ = calculate_shift((h/2)·(w/2)) always
        (ignored by a static-shift scheduler such as FLUX.1-schnell's), h, w the latent size.
        """
        _, h, w = self.latent_shape(height, width)
        cfg = resolve_flow_config(self.scheduler_config)  # defaults filled in, unsupported options refused
        mu = shift_for(cfg, (h // self.patch) * (w // self.patch))
        if self.kind == "sd3":
            return FlowSchedule.from_config(cfg, steps, inversion_steps, mu=mu if cfg["use_dynamic_shifting"] else None)
        grid = "scheduler" if self.scheduler_config.get("use_flow_sigmas") else "linspace"
        return FlowSchedule.from_config(cfg, steps, inversion_steps, mu=mu, sigmas=grid)

    def guidance_scales(self, guidance_scale: float, inversion_guidance_scale: float) -> tuple[float, float]:
        """(w_d, w_i) for `noisefast.transform`. FLUX.1-dev embeds w_d instead (`condition`): its denoising runs the
        conditional velocity only (w_d → 1), as ``FluxPipeline`` without true CFG does."""
        if self.guidance_embeds:
            return 1.0, inversion_guidance_scale
        return guidance_scale, inversion_guidance_scale

    def condition(self, cond: Condition, guidance_scale: float) -> Condition:
        """FLUX.1-dev: the condition carries the embedded guidance (``FluxPipeline``'s float32 ``guidance``)."""
        if not self.guidance_embeds:
            return cond
        g = torch.full((cond.batch_size,), float(guidance_scale), dtype=torch.float32, device=cond.prompt_embeds.device)
        return replace(cond, guidance=g)

    def pipeline_latents(self, latents):  # [K, C, h, w] → [K, C, h, w] (SD3), [K, h/2·w/2, 4C] (FLUX)
        """What the stock pipeline's ``latents=`` takes for these noises: FLUX packs them 2×2 (``_pack_latents``)."""
        if self.kind == "sd3":
            return latents
        from diffusers import FluxPipeline

        K, C, h, w = latents.shape
        return FluxPipeline._pack_latents(latents, K, C, h, w)

    def auto_excluded(self) -> dict[str, str]:
        """Why ``backend="auto"`` runs eager torch for this transformer: the backends it does not measure."""
        reason = ("auto measures UNet runtimes only; SD3's export runs with --backend onnxruntime" if self.kind == "sd3"
                  else "FLUX transformers have no ONNX export (aten::rms_norm has no ONNX symbolic)")
        return {"onnxruntime": reason, "compile": "wraps UNet2DConditionModel's interface only",
                "tensorrt": "builds UNet2DConditionModel's interface only"}

    def make_denoiser(self, backend: str, fast_path, *, cache_dir=None, threads: int | None = None):
        """torch (and auto, which has no other candidate here: `auto_excluded`): `SD3Denoiser` / `FluxDenoiser`;
        onnxruntime: the SD3 transformer exported to ONNX (its velocity is the graph's output,
        `noisefast.denoisers.onnx_export`, cached like a UNet's); everything else is refused, saying why."""
        from noisefast.denoisers.flow import FluxDenoiser, SD3Denoiser
        from noisefast.denoisers.onnx_export import FLUX_ONNX_UNAVAILABLE

        if fast_path is not None:
            raise BackendUnavailableError(
                "the GPU fast path (--fast, --channels-last, --attention, --fuse-qkv, --cuda-graph, --pinned) is "
                "implemented for UNet models; SD3/FLUX transformers run without it")  # fmt: skip
        if backend in ("torch", "auto"):
            return (SD3Denoiser if self.kind == "sd3" else FluxDenoiser)(self.transformer)
        if backend == "onnxruntime" and self.kind == "flux":
            raise BackendUnavailableError(FLUX_ONNX_UNAVAILABLE)
        if backend == "onnxruntime":
            from noisefast.denoisers.backends import make_denoiser

            # exported with dynamic batch, size and text length
            return make_denoiser(self.transformer, "onnxruntime", cache_dir=cache_dir, num_threads=threads)
        raise BackendUnavailableError(
            f"backend {backend!r} is not available for {self.kind.upper()} transformers: 'compile' and 'tensorrt' "
            f"wrap and build UNet2DConditionModel's interface only; use --backend torch"
            + (" or onnxruntime" if self.kind == "sd3" else ""))  # fmt: skip


__all__ = ["FlowArchitecture", "UNetArchitecture"]
