"""The `Denoiser` protocol and the `Condition` it is called with.

A denoiser is anything with ``model_out = den(x, t, cond)``: ``x`` ``[B, C, H, W]``, ``t`` a ``[B]``
tensor of (integer-valued) timesteps, ``cond`` a `Condition` whose batch is ``B`` (or 1, broadcast).
It returns the raw model output (epsilon or v, as the schedule says) for exactly the conditioning it is
given: classifier-free guidance is not its business — `noisefast.denoisers.guidance` batches the
unconditional and conditional halves into one call and the fused ``ddim_move`` combines them.

A backend that runs its forward outside torch's autograd (ONNX Runtime, TensorRT, ``torch.compile``, ``auto``)
names the denoiser gradients go through — the eager torch UNet — as its ``autograd`` attribute
(`autograd_denoiser`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Condition:
    """Prompt conditioning, batch-first. Any field may have batch 1 and is then broadcast.

    SDXL: ``prompt_embeds`` [B, 77, 2048], ``pooled_prompt_embeds`` [B, 1280], ``time_ids`` [B, 6];
    SD3: ``prompt_embeds`` [B, 77 + 256, 4096] (CLIP-L/G ‖ T5, the joint text sequence), ``pooled_prompt_embeds``
    [B, 2048]; FLUX: ``prompt_embeds`` [B, 512, 4096] (T5), ``pooled_prompt_embeds`` [B, 768] (CLIP), and for
    guidance-distilled FLUX.1-dev ``guidance`` [B]: the guidance scale the model *embeds* (an input, not CFG).
    The ``negative_*`` fields are the unconditional half, used where a step runs it (see `guidance.Guidance`).
    """

    prompt_embeds: torch.Tensor  # [B, L, D]
    pooled_prompt_embeds: torch.Tensor | None = None  # [B, P]
    time_ids: torch.Tensor | None = None  # [B, 6]
    negative_prompt_embeds: torch.Tensor | None = None  # [B, L, D]
    negative_pooled_prompt_embeds: torch.Tensor | None = None  # [B, P]
    negative_time_ids: torch.Tensor | None = None  # [B, 6] (defaults to time_ids)
    guidance: torch.Tensor | None = None  # [B] embedded guidance of guidance-distilled models (FLUX.1-dev); both halves

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and not isinstance(v, torch.Tensor):
                raise TypeError(f"Condition.{f.name} must be a torch.Tensor or None, got {type(v).__name__}")
        if self.prompt_embeds.ndim != 3:
            raise ValueError(
                f"Condition.prompt_embeds must be [B, L, D], got shape {tuple(self.prompt_embeds.shape)}"
            )
        sizes = {f.name: getattr(self, f.name).shape[0] for f in fields(self) if getattr(self, f.name) is not None}
        big = {n: s for n, s in sizes.items() if s != 1}
        if len(set(big.values())) > 1:
            raise ValueError(f"Condition fields disagree on batch size: {sizes}")

    @property
    def batch_size(self) -> int:
        """The common batch size (1 when every field is broadcastable)."""
        return max(getattr(self, f.name).shape[0] for f in fields(self) if getattr(self, f.name) is not None)

    def _map(self, fn) -> "Condition":
        return replace(self, **{f.name: (fn(v) if (v := getattr(self, f.name)) is not None else None) for f in fields(self)})

    def to(self, device=None, dtype=None) -> "Condition":
        """Move every tensor; ``dtype`` applies to floating-point fields only."""
        return self._map(lambda v: v.to(device=device, dtype=dtype if v.is_floating_point() else None))

    def expand(self, batch: int) -> "Condition":
        """Broadcast batch-1 fields to ``batch``; a field with another batch size is an error."""

        def grow(v):
            if v.shape[0] == batch:
                return v
            if v.shape[0] != 1:
                raise ValueError(f"cannot broadcast a condition of batch {v.shape[0]} to batch {batch}")
            return v.expand(batch, *v.shape[1:])

        return self._map(grow)

    @staticmethod
    def concat(conds) -> "Condition":
        """``[c₀; c₁; …]`` along the batch, field by field; every condition must set the same fields."""
        conds = list(conds)
        if not conds:
            raise ValueError("Condition.concat needs at least one condition")
        if len(conds) == 1:
            return conds[0]
        values = {}
        for f in fields(Condition):
            vs = [getattr(c, f.name) for c in conds]
            if any(v is None for v in vs) and not all(v is None for v in vs):
                raise ValueError(f"cannot batch conditions: Condition.{f.name} is set in some of them only")
            shapes = {tuple(v.shape[1:]) for v in vs if v is not None}
            if len(shapes) > 1:  # e.g. text sequences of different lengths (SD3/FLUX pad every prompt to one length)
                raise ValueError(f"cannot batch conditions: Condition.{f.name} has per-row shapes {sorted(shapes)}")
            values[f.name] = None if vs[0] is None else torch.cat(vs)
        return Condition(**values)

    def index(self, idx) -> "Condition":
        """Rows ``idx`` (a slice or index tensor) of every batch-B field; batch-1 fields are kept."""
        b = self.batch_size
        return self._map(lambda v: v[idx] if v.shape[0] == b and b != 1 else v)

    def positive(self) -> "Condition":
        """The conditional half only (what the UNet sees without guidance)."""
        return Condition(self.prompt_embeds, self.pooled_prompt_embeds, self.time_ids, guidance=self.guidance)

    def negative(self) -> "Condition":
        """The unconditional half as a positive condition (zeros where no negative prompt was given)."""
        neg = self.negative_prompt_embeds
        if neg is None:
            neg = torch.zeros_like(self.prompt_embeds)
        pooled = self.negative_pooled_prompt_embeds
        if pooled is None and self.pooled_prompt_embeds is not None:
            pooled = torch.zeros_like(self.pooled_prompt_embeds)
        tids = self.negative_time_ids if self.negative_time_ids is not None else self.time_ids
        return Condition(neg, pooled, tids, guidance=self.guidance)


def wants_grad(x: torch.Tensor, cond: Condition) -> bool:
    """Whether autograd must record a call on ``(x, cond)``: grad mode on and the latent or a condition tensor
    requires grad."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(v.requires_grad for f in fields(cond) if (v := getattr(cond, f.name)) is not None)


def autograd_denoiser(den):
    """The denoiser gradients go through: ``den.autograd`` where a backend runs its forward elsewhere (ONNX Runtime,
    TensorRT, ``torch.compile``, ``auto``: the eager torch UNet), else ``den`` itself."""
    twin = getattr(den, "autograd", None)
    return den if twin is None else twin


@runtime_checkable
class Denoiser(Protocol):
    """``model_out = den(x, t, cond)``: raw model output for the conditioning given."""

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W]
        t: torch.Tensor,  # [B] timesteps
        cond: Condition,  # batch B or 1
    ) -> torch.Tensor:  # [B, C, H, W]
        ...
