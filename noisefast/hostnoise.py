"""Seed noise drawn on the CPU generator into reusable (page-locked) host buffers, copied to the device
``non_blocking``: the values of `noisefast.seeds.noise_from_seeds`, bit for bit, without a fresh host tensor,
a ``torch.cat`` and a synchronous copy per chunk.

Why: the reproducible draw is on the CPU generator (what diffusers draws for ``Generator("cpu").manual_seed(s)``).
A plain ``noise_from_seeds(..., device="cuda")`` draws into pageable memory and copies synchronously, so the
GPU idles while the CPU draws the next chunk. Here each chunk is drawn straight into one of two pinned buffers
(``torch.randn(..., out=row)`` with that seed's generator — the call ``noise_from_seeds`` makes, so the same
bits) and copied with ``non_blocking=True``; an event per buffer keeps the CPU from overwriting a buffer whose
copy has not finished. The next chunk's draw then overlaps this chunk's copy and GPU work.

Without CUDA (or with ``pinned=False``) the buffers are ordinary memory and the copy is a plain one: the same
values, no overlap.
"""

from __future__ import annotations

import torch

from noisefast.seeds import check_latent_shape, check_seeds


def draw_into(out: torch.Tensor, seeds) -> torch.Tensor:  # out [≥len(seeds), *shape] CPU → out[:len(seeds)]
    """Fill ``out[i]`` with the noise of ``seeds[i]`` (CPU generator, ``out``'s dtype); returns the filled rows."""
    seeds = check_seeds(seeds)
    if out.device.type != "cpu":
        raise ValueError(f"draw_into draws on the CPU generator into a CPU tensor, got one on {out.device}")
    if len(seeds) > out.shape[0]:
        raise ValueError(f"{len(seeds)} seeds do not fit a buffer of {out.shape[0]} rows")
    if not out.is_contiguous():
        raise ValueError("draw_into needs a contiguous buffer (each row is one draw)")
    for i, s in enumerate(seeds):
        # noise_from_seeds draws torch.randn((1, *shape), generator=..., dtype=...): the same call, into the row
        torch.randn(out[i : i + 1].shape, generator=torch.Generator("cpu").manual_seed(s), dtype=out.dtype,
                    out=out[i : i + 1])
    return out[: len(seeds)]


class SeedNoise:
    """``noise = SeedNoise(shape, batch, dtype, device)(seeds)``: ``noise_from_seeds(seeds, shape, "cpu", dtype,
    device)`` for up to ``batch`` seeds per call, through two reusable host buffers.

    ``pinned``: page-locked host buffers and ``non_blocking`` copies (default: whenever ``device`` is CUDA).
    The returned device tensor is a fresh tensor per call (``out=`` to fill a given one instead, e.g. a CUDA
    graph's static input).
    """

    def __init__(self, shape, batch: int, dtype: torch.dtype = torch.float32, device="cpu", *, pinned: bool | None = None):
        self.shape = check_latent_shape(shape)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.batch, self.dtype, self.device = batch, dtype, torch.device(device)
        cuda = self.device.type == "cuda"
        self.pinned = cuda if pinned is None else bool(pinned)
        if self.pinned and not cuda:
            raise ValueError(f"pinned host buffers are for copies to a CUDA device, not {self.device}")
        self._host = [torch.empty((batch, *self.shape), dtype=dtype, pin_memory=self.pinned) for _ in range(2)]
        self._done = [None, None]  # CUDA event per buffer: its last copy has finished reading it
        self._next = 0

    def __call__(self, seeds, *, out: torch.Tensor | None = None) -> torch.Tensor:  # [len(seeds), *shape] on device
        seeds = check_seeds(seeds)
        n = len(seeds)
        if n > self.batch:
            raise ValueError(f"{n} seeds exceed this SeedNoise's batch {self.batch}")
        if out is not None and (out.shape[0] < n or tuple(out.shape[1:]) != self.shape or out.dtype != self.dtype
                                or out.device != self.device):
            raise ValueError(f"out must be [≥{n}, {', '.join(map(str, self.shape))}] {self.dtype} on {self.device}, "
                             f"got {tuple(out.shape)} {out.dtype} on {out.device}")
        i = self._next
        self._next = 1 - i
        if self._done[i] is not None:
            self._done[i].synchronize()  # the copy issued from this buffer two calls ago has read it
        host = draw_into(self._host[i], seeds)
        dst = torch.empty((n, *self.shape), dtype=self.dtype, device=self.device) if out is None else out[:n]
        dst.copy_(host, non_blocking=self.pinned)
        if self.pinned:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self._done[i] = event
        return dst
