"""`Settings`: the resolved per-call settings of the Engine, checked once, with the limits they must fit.

`resolve_settings` fills what the call did not give from the model's `ModelDefaults` and checks every
value against the range the computation can hold: sizes are positive multiples of the model's spatial
factor and at most its ``max_side``; step counts at most the training timesteps; guidance scales finite
and at most `MAX_GUIDANCE` in magnitude (beyond it the guided output overflows fp16 and the sample is
noise). `check_fits_memory` estimates a batch's activation memory before anything is allocated.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch

from noisefast.defaults import ModelDefaults
from noisefast.errors import InputError, LimitError

MAX_GUIDANCE = 1e3  # |w| above this: m_u + w·(m_c − m_u) leaves fp16 range for ordinary model outputs
MAX_STEPS = 1000  # DDIM steps cannot exceed the training timesteps (1000 for every model here)
MAX_BATCH = 4096  # rows per UNet batch


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one call (model defaults with the call's overrides); hashable, so rows
    with equal settings can share UNet batches."""

    height: int
    width: int
    steps: int
    inversion_steps: int
    guidance_scale: float
    inversion_guidance_scale: float
    batch_size: int | None

    def as_dict(self) -> dict:
        return asdict(self)

    def group(self) -> tuple:
        """What rows must share to go through one UNet batch (everything but ``batch_size``)."""
        return (self.height, self.width, self.steps, self.inversion_steps, self.guidance_scale,
                self.inversion_guidance_scale)  # fmt: skip


def check_int(name: str, v, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"{name} must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise InputError(f"{name} must be in [{lo}, {hi}], got {v}" if hi is not None else f"{name} must be ≥ {lo}, got {v}")
    return v


def check_float(name: str, v, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"{name} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise InputError(f"{name} must be finite, got {v}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(f"{name} must be in [{lo:g}, {hi:g}], got {v:g}")
    return v


def resolve_settings(defaults: ModelDefaults, size_multiple: int, size_reason: str, *, height=None, width=None,
                     steps=None, inversion_steps=None, guidance_scale=None, inversion_guidance_scale=None,
                     batch_size=None) -> Settings:  # fmt: skip
    """``defaults`` with the given overrides, every value checked (an `InputError` names the bad one)."""
    pick = lambda v, default: default if v is None else v  # noqa: E731
    s = Settings(
        height=check_int("height", pick(height, defaults.height), 1, defaults.max_side),
        width=check_int("width", pick(width, defaults.width), 1, defaults.max_side),
        steps=check_int("steps", pick(steps, defaults.steps), 1, MAX_STEPS),
        inversion_steps=check_int("inversion_steps", pick(inversion_steps, defaults.inversion_steps), 1, MAX_STEPS),
        guidance_scale=check_float("guidance_scale", pick(guidance_scale, defaults.guidance_scale), -MAX_GUIDANCE, MAX_GUIDANCE),
        inversion_guidance_scale=check_float("inversion_guidance_scale",
                                             pick(inversion_guidance_scale, defaults.inversion_guidance_scale),
                                             -MAX_GUIDANCE, MAX_GUIDANCE),  # fmt: skip
        batch_size=None if batch_size is None else check_int("batch_size", batch_size, 1, MAX_BATCH),
    )
    for name in ("height", "width"):
        if getattr(s, name) % size_multiple:
            raise InputError(f"{name}={getattr(s, name)} is not a multiple of {size_multiple} ({size_reason})")
    return s


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a batch on ``device``: free GPU memory, or the machine's physical memory on CPU."""
    try:
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0]
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None


def check_fits_memory(rows: int, latent_shape: tuple[int, ...], width_channels: int, dtype: torch.dtype,
                      device: torch.device, *, cfg: bool) -> None:  # fmt: skip
    """Refuse (`LimitError`) a UNet batch whose activations would not fit ``device``.

    Estimate: the first UNet block holds ≈ 16 feature maps of ``width_channels`` channels at the latent
    resolution per row (ResNet + attention intermediates); doubled for classifier-free guidance. It is an
    order-of-magnitude guard against absurd sizes (a 100000² image), not a precise budget.
    """
    per_row = 16 * width_channels * math.prod(latent_shape[1:]) * torch.finfo(dtype).bits // 8
    need = rows * per_row * (2 if cfg else 1)
    have = available_memory(device)
    if have is not None and need > have:
        raise LimitError(
            f"a batch of {rows} row(s) at latent size {'×'.join(map(str, latent_shape[1:]))} needs about "
            f"{need / 2**30:.1f} GiB on {device}, more than the {have / 2**30:.1f} GiB available; use a smaller "
            f"size or --batch-size"
        )


__all__ = ["MAX_BATCH", "MAX_GUIDANCE", "MAX_STEPS", "Settings", "check_fits_memory", "check_float", "check_int",
           "resolve_settings"]  # fmt: skip
