"""The Engine's checks of what callers hand it besides settings: seeds and given latents, each refused in one
`InputError` naming the problem (the settings are `noisefast.settings`'s, the options `noisefast.params`')."""

from __future__ import annotations

import torch

from noisefast.defaults import DEFAULT_NUM_CANDIDATES
from noisefast.errors import InputError
from noisefast.seeds import check_seeds


def engine_seeds(seeds, unique: bool = True) -> list[int]:
    """`check_seeds` with its errors as `InputError` (the Engine's one error type for bad arguments); a seed
    listed twice is refused (one row per seed: the CLI, the server and the screening job refuse it too)."""
    try:
        seeds = check_seeds(seeds)
    except (TypeError, ValueError) as e:
        raise InputError(str(e), field="seeds") from None
    if not seeds:
        raise InputError("seeds is empty", field="seeds")
    if unique and len(set(seeds)) != len(seeds):
        raise InputError("a seed is listed twice", field="seeds")
    return seeds


def candidate_seeds(seeds) -> list[int]:
    return engine_seeds(range(DEFAULT_NUM_CANDIDATES) if seeds is None else seeds)


def check_latents(latents, shape: tuple[int, ...], size: str) -> torch.Tensor:
    """Given noise (``latents=`` / ``noise=``): a finite floating-point [B, *shape] tensor with B ≥ 1."""
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or tuple(latents.shape[1:]) != tuple(shape):
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise InputError(f"noise must be [B, {', '.join(map(str, shape))}] for {size} (latents= or noise=), got {got}",
                         field="noise")  # fmt: skip
    if not latents.is_floating_point() or not bool(torch.isfinite(latents).all()):
        raise InputError("noise (latents=) must be a floating-point tensor of finite values", field="noise")
    if len(latents) == 0:
        raise InputError("noise (latents=) holds no rows", field="noise")
    return latents


__all__ = ["candidate_seeds", "check_latents", "engine_seeds"]
