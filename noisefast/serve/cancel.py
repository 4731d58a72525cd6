"""Cancellation inside running work: a timed-out or disconnected request stops within ONE UNet call.

The batcher's `Watch` knows what the model's thread is running — a batch of rows (each row's request) or a task
(optimize, generate). `Watched` wraps the Engine's `Denoiser`; before every call made on the model's thread it
asks the watch which rows are still wanted:

- all of them → the call runs as is;
- none (every request of the batch cancelled, or the task cancelled) → `Cancelled` is raised there: the batch or
  the task stops, and the model's thread is free for the next work;
- some → the call runs on the wanted rows only (padded to a bucket size for the shape-specialised backends,
  compile/TensorRT, which only see those sizes); the others' outputs are zeros, and their scores are never
  delivered. So the cancelled rows leave the running batch at the next UNet call.

A call's batch is the batch's rows, or twice them when guidance runs both halves in one call (``[uncond; cond]``,
`noisefast.denoisers.guidance.GuidedDenoiser`): the row mask is repeated per half. Calls from other threads
(a caller using the same Engine directly) pass through untouched. A CUDA-graph chain (``--cuda-graph``) replays
the whole chain at once: there a cancelled batch stops at the next batch instead.
"""

from __future__ import annotations

import contextlib
import threading

import torch


class Cancelled(Exception):
    """The work running on the model's thread was cancelled (its request timed out or its client left)."""


class Watch:
    """What the model's thread runs now, for `Watched`: ``rows(keys)`` or ``task(work)`` (keys/work: objects with a
    ``cancelled`` flag)."""

    def __init__(self):
        self.owner: int | None = None  # the model's thread
        self._keys: list | None = None  # the running batch's rows' requests, padded as the scorer pads them
        self._buckets: tuple[int, ...] | None = None
        self._work = None

    @contextlib.contextmanager
    def rows(self, keys: list, buckets):
        self._keys, self._buckets = keys, tuple(buckets) if buckets else None
        try:
            yield
        finally:
            self._keys = self._buckets = None

    @contextlib.contextmanager
    def task(self, work, engine):
        """``work`` running; the Engine's denoiser watched meanwhile (optimize and generate call it directly)."""
        self._work, den = work, engine.den
        engine.den = Watched(den, self)
        try:
            yield
        finally:
            engine.den, self._work = den, None

    def live(self, n: int) -> list[int] | None:
        """The wanted rows of a denoiser call of batch ``n`` (positions in the batch's rows), None for all of them;
        raises `Cancelled` when none is wanted."""
        if threading.get_ident() != self.owner:
            return None
        if self._work is not None:
            if self._work.cancelled:
                raise Cancelled
            return None
        keys = self._keys
        if not keys or n % len(keys):
            return None
        live = [i for i, k in enumerate(keys) if not k.cancelled]
        if not live:
            raise Cancelled
        return None if len(live) == len(keys) else live

    def bucket(self, rows: int) -> int:
        return next((b for b in self._buckets if b >= rows), rows) if self._buckets else rows


class Watched:
    """A `Denoiser` that asks its `Watch` before each call (see the module docstring); other attributes are the
    wrapped denoiser's."""

    def __init__(self, den, watch: Watch):
        self.den, self.watch = den, watch

    def __getattr__(self, name):
        return getattr(self.den, name)

    @property
    def autograd(self):
        """The wrapped backend's gradient path (`noisefast.denoisers.base.autograd_denoiser`: a checkpointed step's
        backward, e.g. under ``auto`` or ONNX Runtime), watched as well; None when the forward is already torch's."""
        inner = getattr(self.den, "autograd", None)
        return None if inner is None else Watched(inner, self.watch)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond):
        live = self.watch.live(x.shape[0])
        if live is None:
            return self.den(x, t, cond)
        B = len(self.watch._keys)
        halves, size = x.shape[0] // B, self.watch.bucket(len(live))
        padded = live + [live[-1]] * (size - len(live))
        idx = torch.tensor([i + h * B for h in range(halves) for i in padded], device=x.device)
        part = self.den(x[idx], t[idx], cond.index(idx) if cond.batch_size == x.shape[0] else cond)
        out = part.new_zeros((x.shape[0], *part.shape[1:]))
        dst = torch.tensor([i + h * B for h in range(halves) for i in live], device=x.device)
        src = torch.tensor([j + h * size for h in range(halves) for j in range(len(live))], device=x.device)
        out[dst] = part[src]
        return out


__all__ = ["Cancelled", "Watch", "Watched"]
