"""Every numerical tolerance of the suite, from an error model (not from what one machine produced).

Two rules, in order of preference:

1. **Flash-attention rule** (when a float64 run of the reference exists):
   ``|actual − ref64| ≤ 2·|reference − ref64| + ulps·eps(dtype)·max(1, |ref64|)``: noisefast may be
   at most twice as wrong as the reference's own rounding error in the same dtype, plus a few units
   in the last place for what that error happens not to cover. It holds for any CPU ISA (AVX-512,
   AVX2+FMA, SSE2 round differently) and any thread count, because both sides are measured against
   the same exact answer. :func:`assert_close_to_reference`.

2. **Magnitude model** (no float64 run possible, e.g. ONNX Runtime or a precomputed number):
   ``atol = ulps · eps(dtype) · max(1, |reference|) · steps · (1 + |w|)``: each of ``steps`` chained
   moves adds rounding errors of relative size eps on values of the output's magnitude, and classifier-
   free guidance ``m_u + w·(m_c − m_u)`` amplifies the model-output errors by up to ``1 + |w|``.
   :func:`magnitude_atol`.

Float64 comparisons (gradchecks, batch/chunk invariance of a float64 pipeline) use the same model
with eps = 2⁻⁵².
"""

from __future__ import annotations

import torch

# Unit roundoff (half an ulp at 1) of each storage dtype.
EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def eps(dtype: torch.dtype) -> float:
    return EPS[dtype]


def scale_of(t: torch.Tensor) -> float:
    """max(1, max|t|): the magnitude absolute rounding errors are relative to."""
    return max(1.0, t.detach().abs().max().item()) if t.numel() else 1.0


def magnitude_atol(reference: torch.Tensor | float, *, dtype: torch.dtype | None = None, steps: int = 1,
                   guidance: float = 0.0, ulps: float = 4.0) -> float:
    """Rule 2: ``ulps · eps(dtype) · max(1, |reference|) · steps · (1 + |guidance|)``."""
    ref = torch.as_tensor(reference)
    dtype = dtype or (ref.dtype if ref.is_floating_point() else torch.float32)
    return ulps * eps(dtype) * scale_of(ref) * steps * (1 + abs(guidance))


def assert_close_to_reference(actual: torch.Tensor, reference: torch.Tensor, reference64: torch.Tensor, *,
                              ulps: float = 4.0, name: str = "") -> None:
    """Rule 1: ``|actual − ref64| ≤ 2·|reference − ref64| + ulps·eps(dtype)·max(1, |ref64|)`` (max over elements).

    ``reference`` is the oracle run in ``actual``'s dtype, ``reference64`` the same computation in float64
    from the same (already rounded) inputs.
    """
    assert actual.shape == reference.shape == reference64.shape, (name, actual.shape, reference.shape,
                                                                  reference64.shape)
    assert torch.isfinite(actual).all(), f"{name}: non-finite output"
    if not actual.numel():
        return
    want = reference64.double()
    err = (actual.double() - want).abs().max().item()
    err_ref = (reference.double() - want).abs().max().item()
    bound = 2 * err_ref + ulps * eps(actual.dtype) * scale_of(want)
    assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g} (reference's own error {err_ref:.3g})"


def stock_sdxl_latents64(pipe, prompt: str, seed: int, *, height: int, width: int, steps: int,
                         guidance: float) -> torch.Tensor:
    """The stock diffusers SDXL pipeline run in float64 from the float32 run's inputs: the same noise
    (drawn in float32 from ``Generator("cpu").manual_seed(seed)``) and prompt embeddings, upcast; the
    UNet in float64. This is ``reference64`` for a float32 diffusers-parity test. Turns ``pipe`` float64
    (the fixture is per test)."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    noise = randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=guidance > 1)
    up = lambda t: None if t is None else t.double()  # noqa: E731
    pipe.to(dtype=torch.float64)  # encode_prompt casts given embeddings to text_encoder_2's dtype
    return pipe(prompt_embeds=up(pe), negative_prompt_embeds=up(npe), pooled_prompt_embeds=up(pooled),
                negative_pooled_prompt_embeds=up(npooled), latents=noise.double(), height=height, width=width,
                num_inference_steps=steps, guidance_scale=guidance, output_type="latent").images


# torch.autograd.gradcheck in float64 on the kernels (O(1) smooth functions of O(1) inputs): central differences
# with h = 1e-6 err by rounding ≈ eps64·|f|/h ≈ 1e-10 and truncation ≈ h²·|f‴|/6 ≈ 1e-13; atol 1e-8 / rtol 1e-6
# leave two orders of magnitude over that (torch's defaults, 1e-5 / 1e-3, would hide small gradient bugs).
GRADCHECK_F64 = dict(eps=1e-6, atol=1e-8, rtol=1e-6)

# Two float64 runs of the same operations that differ only in batching, chunking or summation order: each
# output is a reassociation of at most ~10⁴ roundings of size eps64 (1.1e-16) on O(1) values → 1e-12.
F64_SAME_OPS = dict(rtol=1e-12, atol=1e-12)

# Depth of the tiny test UNet in "roundings per output element" (≈ 40 layers, each a float32 reduction):
# the relative error of one float32 forward is ≲ UNET_ULPS·eps32.
UNET_ULPS = 64


def unet_rel_tolerance(guidance: float = 0.0, *, runs: int = 2) -> float:
    """Relative (norm) difference allowed between ``runs`` float32 UNet loops that should agree (diffusers vs
    noisefast, batched vs chunked): ``runs · UNET_ULPS · eps32 · (1 + |w|)``. DDIM is contractive along the
    loop, so the per-step relative error does not grow with the number of steps."""
    return runs * UNET_ULPS * EPS[torch.float32] * (1 + abs(guidance))


def float64_denoiser(den):
    """A float64 twin of a `UNetDenoiser` (a deep copy of its UNet): ``reference64`` for its float32 runs."""
    import copy

    from noisefast.denoisers.unet import UNetDenoiser

    return UNetDenoiser(copy.deepcopy(den.unet).double())


def assert_denoiser_close(actual: torch.Tensor, den, den64, x: torch.Tensor, t, cond, *, name: str = "") -> None:
    """Rule 1 for one UNet call: ``actual`` (another runtime's output for (x, t, cond): ONNX Runtime,
    torch.compile) may be at most twice as far from the float64 UNet as torch's own float32 UNet ``den``."""
    with torch.no_grad():
        ref = den(x, t, cond)
        ref64 = den64(x.double(), t, cond.to(dtype=torch.float64))
    assert_close_to_reference(actual, ref, ref64, name=name)
