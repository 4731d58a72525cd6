"""The stock SD3 / FLUX pipelines as references: float32 latents for a seed, and the same run in float64.

``reference64`` of the flash rule (tests/_tolerance.py) needs the whole computation in float64. diffusers'
``FlowMatchEulerDiscreteScheduler.step`` casts the sample to float32 (``sample.to(torch.float32)``) before
x + dt·v, which would turn a float64 run back into a float32 one at every step; `Float64Euler` is the same Euler
step in the sample's dtype (the σ are the scheduler's own float32 values, exact in float64). Everything else is the stock pipeline, run with float64 weights and the float32 run's
inputs upcast: the same noise (drawn in float32 from ``Generator("cpu").manual_seed(seed)``) and prompt embeddings.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


class Float64Euler(FlowMatchEulerDiscreteScheduler):
    """``step`` without the float32 upcast: x' = x + (σ' − σ)·v in the sample's dtype."""

    def step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        if self.step_index is None:
            self._init_step_index(timestep)
        dt = self.sigmas[self.step_index + 1].to(sample.dtype) - self.sigmas[self.step_index].to(sample.dtype)
        self._step_index += 1
        return (sample + dt * model_output,)


def flux_unpack(pipe, packed: torch.Tensor, height: int, width: int) -> torch.Tensor:  # [B, L, 4C] → [B, C, h, w]
    return pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)


def stock_latents(pipe, prompt: str, seed: int, *, height: int, width: int, steps: int, guidance: float,
                  **kwargs) -> torch.Tensor:
    """The stock pipeline's ``output_type="latent"`` result for ``seed`` (FLUX: unpacked to [1, C, h, w]);
    ``kwargs`` go to the pipeline (e.g. FLUX's ``true_cfg_scale`` and ``negative_prompt``)."""
    out = pipe(prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="latent", **kwargs).images  # fmt: skip
    return flux_unpack(pipe, out, height, width) if out.ndim == 3 else out


def stock_latents64(pipe, prompt: str, seed: int, *, height: int, width: int, steps: int, guidance: float,
                    true_cfg_scale: float | None = None) -> torch.Tensor:
    """The same run in float64 (see the module docstring). Turns ``pipe`` float64 (use a fresh pipeline).
    ``true_cfg_scale`` (FLUX): FluxPipeline's true CFG with the empty negative prompt."""
    from diffusers import FluxPipeline
    from diffusers.utils.torch_utils import randn_tensor

    f = pipe.vae_scale_factor
    flux = isinstance(pipe, FluxPipeline)
    channels = pipe.transformer.config.in_channels // (4 if flux else 1)
    noise = randn_tensor((1, channels, height // f, width // f), generator=torch.Generator("cpu").manual_seed(seed),
                         dtype=torch.float32)  # fmt: skip
    up = lambda t: None if t is None else t.double()  # noqa: E731
    pipe.scheduler = Float64Euler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        if flux:
            pe, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, device="cpu")
            kw = dict(prompt_embeds=up(pe), pooled_prompt_embeds=up(pooled))
            if true_cfg_scale is not None:
                npe, npooled, _ = pipe.encode_prompt("", prompt_2=None, device="cpu")
                kw |= dict(negative_prompt_embeds=up(npe), negative_pooled_prompt_embeds=up(npooled),
                           true_cfg_scale=true_cfg_scale)  # fmt: skip
            latents = pipe._pack_latents(noise, 1, channels, height // f, width // f)
        else:
            pe, npe, pooled, npooled = pipe.encode_prompt(prompt, None, None, device="cpu",
                                                          do_classifier_free_guidance=guidance > 1)  # fmt: skip
            kw = dict(prompt_embeds=up(pe), negative_prompt_embeds=up(npe), pooled_prompt_embeds=up(pooled),
                      negative_pooled_prompt_embeds=up(npooled))  # fmt: skip
            latents = noise
    pipe.to(dtype=torch.float64)
    out = pipe(latents=latents.double(), height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
               output_type="latent", **kw).images  # fmt: skip
    return flux_unpack(pipe, out, height, width) if flux else out
