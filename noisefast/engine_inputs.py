"""The Engine's checks of what callers hand it besides settings: prompts, seeds and given latents, each refused in one
`InputError` naming the problem (the settings are `noisefast.settings`'s, the options `noisefast.params`')."""

from __future__ import annotations

import torch

from noisefast.defaults import DEFAULT_NUM_CANDIDATES
from noisefast.errors import InputError
from noisefast.seeds import check_seeds
from noisefast.textio import check_text


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


def check_prompt(prompt, negative_prompt=None) -> None:
    """A prompt (and negative prompt, or None) must be UTF-8 text: a tokenizer fails on undecodable bytes (a command
    line's surrogate escapes, JSON's ``"\\udcff"``) with a ``TypeError`` deep inside."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InputError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
    check_text(prompt, "prompt")
    if negative_prompt is not None:
        check_text(negative_prompt, "negative_prompt")


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


__all__ = ["candidate_seeds", "check_latents", "check_prompt", "engine_seeds"]
