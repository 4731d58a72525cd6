"""`GraphedScorer`: the whole denoise → invert → cosine chain of `noisefast.stability.stability_score`, captured
once as a CUDA graph for a fixed batch and latent shape, replayed per chunk of candidates.

    scorer = GraphedScorer(den, sched, cond, batch=8, shape=(4, 64, 64), guidance_scale=0.0)
    scores = scorer(noise)                      # noise [K, 4, 64, 64], any K, any device → [K] float32 on the GPU
    scores = scorer.score_seeds(range(100))     # draws each seed's noise (pinned buffers) and scores it
    scorer.set_condition(other_cond)            # a new prompt: copied into the static condition, no recapture

Why a hand-made ``torch.cuda.CUDAGraph`` rather than ``torch.compile(mode="reduce-overhead")``:
  * it captures the *whole* chain — every UNet call, the fused DDIM moves, the guidance split, the cosine and
    the Python between them — as one graph: one launch per chunk. reduce-overhead graphs only what it compiles;
    compiling the whole chain unrolls the UNet once per step, and either way SDXL's UNet costs minutes of
    compilation per shape, paid again in every process. Capture costs one run of the chain (plus warm-up).
  * it works with the eager UNet, a `FastPathDenoiser` (channels_last, SDPA kernels) or a UNet compiled
    *without* CUDA graphs; a reduce-overhead `CompiledDenoiser` is refused (graphs do not nest).
  * seed screening is exactly its case: fixed batch, fixed resolution, fixed schedule, many replays.
Costs: the graph's private memory pool (the chain's activations at ``batch``) stays allocated while the scorer
lives; shapes, schedule, guidance and condition *shapes* are fixed at capture (a new prompt is copied into the
static condition tensors: `set_condition`).

Requirements for capture: the denoiser must not synchronise with the host or allocate host tensors inside a
call (diffusers' UNet and `UNetDenoiser` do neither once the condition is on the device in the UNet's dtype,
which the constructor ensures). Without CUDA the constructor raises `GraphUnavailable`, unless
``fallback=True``: then every call runs the same chain eagerly on the same static buffers (same chunking,
same results; what the CPU tests exercise).
"""

from __future__ import annotations

from dataclasses import fields

import torch

from noisefast.denoisers.base import Condition
from noisefast.hostnoise import SeedNoise
from noisefast.flow_schedule import Schedule, check_schedule
from noisefast.seeds import check_latent_shape
from noisefast.stability import stability_score
from noisefast.transform import DEFAULT_GUIDANCE_SCALE, DEFAULT_INVERSION_GUIDANCE_SCALE


def _static_copy(cond: Condition, device, dtype) -> Condition:
    """``cond`` on ``device`` (floating fields in ``dtype``), every tensor a fresh one the scorer owns."""
    moved = cond.to(device=device, dtype=dtype)
    return Condition(**{f.name: None if (v := getattr(moved, f.name)) is None else v.clone() for f in fields(Condition)})


class GraphUnavailable(RuntimeError):
    """CUDA graphs cannot be used here (no CUDA device, or a denoiser that cannot be captured)."""


def unavailable_reason(device, den=None) -> str | None:
    """Why a chain on ``device`` with ``den`` cannot be captured, or None when it can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; the denoiser runs on {device}"
    if not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device; torch sees none"
    if getattr(den, "_cudagraphs", False):
        return ("the denoiser is torch.compile'd with CUDA graphs (mode='reduce-overhead'); graphs do not nest — "
                "capture an eager or mode='default' compiled UNet")
    return None


class GraphedScorer:
    """``scores = scorer(noise)``: `stability_score` ``batch`` candidates at a time, replaying one CUDA graph.

    ``den``/``sched``/``cond``/guidance as `stability_score` (``cond`` batch 1, or ``batch`` — a prompt per row,
    as a row packer mixing prompts hands over — moved once to the device and ``dtype``). ``shape``: per-sample latent (C, H, W). ``dtype``/``device`` of the noise: default the denoiser's.
    ``warmup``: eager runs on a side stream before capture (allocator, cuDNN/cuBLAS autotuning, lazy init).
    ``pinned``: `score_seeds` draws through page-locked buffers (`noisefast.hostnoise.SeedNoise`).
    ``fallback``: without CUDA, run the chain eagerly on the static buffers instead of raising `GraphUnavailable`.
    """

    def __init__(self, den, sched: Schedule, cond: Condition, batch: int, shape,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                 inversion_guidance_scale: float = DEFAULT_INVERSION_GUIDANCE_SCALE, *,
                 dtype: torch.dtype | None = None, device=None, warmup: int = 2, pinned: bool = True,
                 fallback: bool = False, pool=None):
        check_schedule(sched)
        if not isinstance(cond, Condition):
            raise TypeError(f"cond must be a noisefast Condition, got {type(cond).__name__}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        if cond.batch_size not in (1, batch):
            raise ValueError(f"cond must have batch 1 (one prompt for every row) or {batch} (one per row), got "
                             f"{cond.batch_size}")
        self.shape = check_latent_shape(shape)
        self.device = torch.device(device if device is not None else den.device)
        self.dtype = dtype if dtype is not None else den.dtype
        self.batch, self.den, self.sched = batch, den, sched
        self.guidance = (guidance_scale, inversion_guidance_scale)
        reason = unavailable_reason(self.device, den)
        if reason is not None and not fallback:
            raise GraphUnavailable(reason + " (GraphedScorer(..., fallback=True) runs the chain eagerly instead)")
        self.graphed = reason is None
        self.fallback_reason = reason
        model_dtype = getattr(den, "dtype", self.dtype)
        # static inputs: the graph reads these addresses on every replay
        self.cond = _static_copy(cond, self.device, model_dtype)
        g = torch.Generator().manual_seed(0)
        self.noise = torch.randn((batch, *self.shape), generator=g).to(self.device, self.dtype)  # [batch, C, H, W]
        self.scores = None  # [batch] static output (graph) / last output (fallback)
        self.graph = None
        self._seed_noise = SeedNoise(self.shape, batch, self.dtype, self.device,
                                     pinned=pinned and self.device.type == "cuda")
        if self.graphed:
            self._capture(warmup, pool)

    def _chain(self) -> torch.Tensor:  # [batch] scores of self.noise
        with torch.inference_mode():
            return stability_score(self.den, self.sched, self.noise, self.cond, *self.guidance)

    def _capture(self, warmup: int, pool) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(max(warmup, 1)):
                self._chain()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.scores = self._chain()

    @property
    def pool(self):
        """The graph's memory pool handle (pass as ``pool=`` to share it with another scorer of the same device)."""
        return None if self.graph is None else self.graph.pool()

    def set_condition(self, cond: Condition) -> None:
        """Score for other prompts: copy ``cond`` (same fields and shapes as the captured one) into the static one."""
        if not isinstance(cond, Condition):
            raise TypeError(f"set_condition needs a noisefast Condition, got {type(cond).__name__}")
        for f in fields(Condition):
            old, new = getattr(self.cond, f.name), getattr(cond, f.name)
            if (old is None) != (new is None) or (old is not None and old.shape != new.shape):
                raise ValueError(f"Condition.{f.name} does not match the captured one: "
                                 f"{None if new is None else tuple(new.shape)} vs {None if old is None else tuple(old.shape)}")
            if old is not None:
                old.copy_(new, non_blocking=True)

    def _run(self, n: int) -> torch.Tensor:  # [n] scores of self.noise[:n]
        if self.graphed:
            self.graph.replay()
        else:
            self.scores = self._chain()
        return self.scores[:n]

    def __call__(self, noise: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:  # [K, C, H, W] → [K]
        """Scores (float32, on the scorer's device) of ``noise``, ``batch`` rows per replay; ``cond``: `set_condition`
        first (with a per-row condition, K must not exceed ``batch``)."""
        if cond is not None:
            self.set_condition(cond)
        if not isinstance(noise, torch.Tensor) or noise.ndim != 1 + len(self.shape) or tuple(noise.shape[1:]) != self.shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise must be [K, {', '.join(map(str, self.shape))}] (the captured shape), got {got}")
        if noise.dtype != self.dtype:
            raise TypeError(f"noise must be {self.dtype} (the captured dtype), got {noise.dtype}")
        K = noise.shape[0]
        out = torch.empty(K, dtype=torch.float32, device=self.device)
        for lo in range(0, K, self.batch):
            n = min(self.batch, K - lo)
            # rows n… keep the previous chunk's noise: each row's score depends on its own row only
            self.noise[:n].copy_(noise[lo : lo + n], non_blocking=True)
            out[lo : lo + n] = self._run(n)
        return out

    def score_seeds(self, seeds) -> torch.Tensor:  # [K] float32 on self.device, in seed order
        """Scores of ``noise_from_seeds(seeds, shape, "cpu", dtype)``, drawn chunk by chunk into the static input."""
        seeds = list(seeds)
        out = torch.empty(len(seeds), dtype=torch.float32, device=self.device)
        for lo in range(0, len(seeds), self.batch):
            chunk = seeds[lo : lo + self.batch]
            self._seed_noise(chunk, out=self.noise)
            out[lo : lo + len(chunk)] = self._run(len(chunk))
        return out

    def __repr__(self) -> str:
        how = "CUDA graph" if self.graphed else f"eager fallback ({self.fallback_reason})"
        return f"GraphedScorer({how}, batch={self.batch}, shape={self.shape}, {self.dtype}, {self.device})"
