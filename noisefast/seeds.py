"""Seed → initial noise, identical to what diffusers' SDXL pipeline draws for that seed.

``StableDiffusionXLPipeline.prepare_latents`` draws ``randn_tensor(shape, generator, device, dtype)`` and
multiplies by ``scheduler.init_noise_sigma``. For one image per generator that is

    torch.randn((1, C, H, W), generator=torch.Generator(generator_device).manual_seed(seed),
                device=generator_device, dtype=dtype).to(device) * init_noise_sigma

and ``init_noise_sigma`` is 1.0 for ``DDIMScheduler`` (and every scheduler this package steps), so the
noise of seed ``s`` is exactly the pipeline's latents for ``generator=torch.Generator(gd).manual_seed(s)``.
A batch here is one generator per seed: it matches a pipeline call per seed, or one call with a *list*
of generators — not one call with a single generator for several images (that draws them jointly).
``dtype`` matters: the pipeline draws in ``prompt_embeds.dtype`` (fp16 for an fp16 pipeline), and fp16
draws are not fp32 draws rounded — pass the same dtype.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch

from noisefast.params import SEED_LIMIT  # seeds are ints in [0, 2**63)


def check_seeds(seeds: Iterable) -> list[int]:
    """Seeds as a list of Python ints, each in [0, 2**63); anything else is a clear error."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise TypeError(f"seeds must be an iterable of ints, got {type(seeds).__name__}")
    out = []
    for s in seeds:
        if isinstance(s, bool) or isinstance(s, float):
            raise TypeError(f"seeds must be ints, got {s!r} ({type(s).__name__})")
        try:
            s = operator.index(s)
        except TypeError:
            raise TypeError(f"seeds must be ints, got {s!r} ({type(s).__name__})") from None
        if not 0 <= s < SEED_LIMIT:
            raise ValueError(f"seed {s} is out of range: seeds must be in [0, 2**63)")
        out.append(s)
    if not out:
        raise ValueError("seeds is empty")
    return out


def check_latent_shape(shape) -> tuple[int, ...]:
    """A per-sample latent shape such as ``(4, 128, 128)``: a non-empty tuple of positive ints."""
    try:
        shape = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints such as (4, 128, 128), got {shape!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints such as (4, 128, 128), got {shape}")
    return shape


def noise_from_seeds(
    seeds: Iterable[int],
    shape,  # per-sample latent shape, e.g. (4, H/8, W/8)
    generator_device="cpu",
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:  # [K, *shape]
    """The initial latents diffusers draws for each seed (see the module docstring), stacked.

    ``generator_device``: where the ``torch.Generator`` lives and the draw happens (CPU by default, the
    reproducible choice across machines); ``device``: where the result goes (default: ``generator_device``).
    """
    seeds = check_seeds(seeds)
    shape = check_latent_shape(shape)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    gen_device = torch.device(generator_device)
    device = gen_device if device is None else torch.device(device)
    if gen_device.type != "cpu" and gen_device.type != device.type:
        # randn_tensor refuses this too: a CUDA generator cannot draw a tensor for another device type
        raise ValueError(f"cannot draw noise for device {device} with a generator on {gen_device}")
    draws = [
        torch.randn((1, *shape), generator=torch.Generator(gen_device).manual_seed(s), device=gen_device, dtype=dtype)
        for s in seeds
    ]
    return torch.cat(draws).to(device)
