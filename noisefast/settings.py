"""`Settings`: the resolved per-call settings of the Engine, checked once, with the limits they must fit.

`resolve_settings` fills what the call did not give from the model's `ModelDefaults` and checks every
value against the range the computation can hold: sizes are positive multiples of the model's spatial
factor and at most its ``max_side``; step counts at most the training timesteps; guidance scales finite
and at most `noisefast.params.MAX_GUIDANCE` in magnitude (beyond it the guided output overflows fp16 and the sample is
noise). `check_fits_memory` estimates a batch's activation memory before anything is allocated.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch

from noisefast.defaults import ModelDefaults
from noisefast.errors import InputError, LimitError
from noisefast.params import SETTINGS, Param


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
    """An integer in [lo, hi] (`noisefast.params.Param.check`: bools refused, the message names ``name``)."""
    return Param(name, int, "", lo, hi).check(v)


def resolve_settings(defaults: ModelDefaults, size_multiple: int, size_reason: str, **overrides) -> Settings:
    """``defaults`` with the given overrides, every value checked by its `noisefast.params.SETTINGS` record (an
    `InputError` names the bad one; an unknown name is refused, never ignored)."""
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)}; the settings are {', '.join(SETTINGS)}")
    values = {}
    for name, param in SETTINGS.items():
        v = overrides.get(name)
        if v is None and name != "batch_size":  # batch_size None: the model's rows for the size (Engine.batch_size_for)
            v = getattr(defaults, name)
        values[name] = None if v is None else param.check(v, hi=defaults.max_side if name in ("height", "width") else None)
    s = Settings(**values)
    for name in ("height", "width"):
        if getattr(s, name) % size_multiple:
            raise InputError(f"{name}={getattr(s, name)} is not a multiple of {size_multiple} ({size_reason})", field=name)
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
                      device: torch.device, *, cfg: bool,
                      fix: str = "use a smaller height/width or fewer rows per UNet batch (the engine's batch_size, "
                                 "--batch-size)") -> None:  # fmt: skip
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
            f"{need / 2**30:.1f} GiB on {device}, more than the {have / 2**30:.1f} GiB available; {fix}"
        )


__all__ = ["Settings", "check_fits_memory", "check_int", "resolve_settings"]
