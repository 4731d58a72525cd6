"""Noise optimization (Algorithm 2): gradient descent with momentum on L(ε) = Σ_b (1 − s(ε_b)).

    s(ε) = cos(vec(ε), vec(F(ε))),  F = I∘D                                 (Definition 1)
    g_k  = ∇_ε L(ε_k)          through every denoiser call of F *and* the first argument of the cosine
    g_k  ← g_k · min(1, c/‖g_k‖)                                           (optional, per sample)
    v    ← μ·v + g_k;   ε_{k+1} = ε_k − lr·v   (Nesterov: ε_{k+1} = ε_k − lr·(g_k + μ·v))
    ε    ← ε·√D/‖ε‖                                                        (optional: the Gaussian shell)

Samples are independent: the loss is a sum of per-sample terms and the denoiser sees each sample on its
own (no batch coupling), so sample b's gradient, update and early stop never depend on another sample.
Memory: ``checkpoint=True`` (default) recomputes each denoiser call in backward, so the graph keeps one
latent per DDIM move instead of a whole UNet's activations; ``max_batch`` bounds how many samples run
forward + backward together. The noise, the velocity and the loss stay in float32 (float64 for float64
noise) whatever the model's dtype; ``autocast_dtype`` additionally runs the denoiser under autocast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from noisefast import ops
from noisefast.denoisers.base import Condition, Denoiser
from noisefast.denoisers.guidance import check_condition_batch, check_guidance_scale
from noisefast.flow_schedule import Schedule, check_schedule
from noisefast.stability import stability_score
from noisefast.defaults import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INVERSION_GUIDANCE_SCALE,
    DEFAULT_ITERATIONS,
    DEFAULT_LR,
    DEFAULT_MOMENTUM,
)
from noisefast.progress import ProgressFn
from noisefast.transform import check_latents, check_max_batch

AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True, eq=False)
class OptimizeState:
    """What ``callback(state)`` sees after each evaluation of s (iteration ``step`` = 0 … steps)."""

    step: int  # ε_step has just been scored; `steps` more updates were asked for in all
    steps: int
    noise: torch.Tensor  # [B, C, H, W] ε_step (a copy; master dtype)
    score: torch.Tensor  # [B] s(ε_step) (frozen samples keep their last score)
    best_score: torch.Tensor  # [B] best s so far
    grad_norm: torch.Tensor  # [B] ‖g‖ before clipping (NaN where no gradient was taken this iteration)
    active: torch.Tensor  # [B] bool: the sample will still be updated


@dataclass(frozen=True, eq=False)
class OptimizeResult:
    noise: torch.Tensor  # [B, C, H, W] the final ε, in the input noise's dtype
    best_noise: torch.Tensor  # [B, C, H, W] per sample the most stable ε seen, in the input noise's dtype
    best_score: torch.Tensor  # [B] s(best_noise), master dtype
    history: torch.Tensor  # [R, B] s(ε_k) for k = 0 … R−1 (R = steps_run + 1 unless interrupted)
    steps_run: int  # number of momentum updates applied
    interrupted: bool  # a KeyboardInterrupt ended the run (the work so far is kept)
    stop_reason: str  # "steps" | "target" | "diverged" (every sample non-finite) | "callback" | "interrupt"

    @property
    def initial_score(self) -> torch.Tensor:  # [B]
        return self.history[0]

    @property
    def final_score(self) -> torch.Tensor:  # [B] s(noise) (last row of the history)
        return self.history[-1]


def optimize_noise(
    den: Denoiser,
    sched: Schedule,
    noise: torch.Tensor,  # [B, C, H, W] ε_0
    cond: Condition,  # batch B or 1
    steps: int = DEFAULT_ITERATIONS,
    lr: float = DEFAULT_LR,
    momentum: float = DEFAULT_MOMENTUM,
    *,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    inversion_guidance_scale: float = DEFAULT_INVERSION_GUIDANCE_SCALE,
    nesterov: bool = False,
    target_stability: float | None = None,
    grad_clip: float | None = None,
    renorm: bool = False,
    checkpoint: bool = True,
    autocast_dtype: torch.dtype | None = None,
    max_batch: int | None = None,
    callback: Callable[[OptimizeState], bool | None] | None = None,
    progress: ProgressFn | None = None,
) -> OptimizeResult:
    """Algorithm 2: minimise 1 − s(ε) per sample by gradient descent with momentum.

    Each iteration k = 0 … steps scores ε_k (with its gradient while k < steps), calls ``callback``,
    then updates every still-active sample. A sample stops (keeps its noise) once its score reaches
    ``target_stability`` or turns non-finite; the run stops when none is active, when ``callback``
    returns ``False``, or on Ctrl-C — which returns what was reached (``interrupted=True``) instead of
    raising. ``history[k]`` is s(ε_k), so ``history[0]`` is the starting stability.
    ``progress(k + 1, steps + 1)`` is called after each evaluation (`noisefast.progress.ProgressBar` draws a bar).
    """
    # 0. validate, then set up the master copies (fp32/fp64): ε, the velocity v, the best so far
    check_latents(noise, den)
    check_condition_batch(cond, noise.shape[0])
    check_schedule(sched)
    steps = _check_int(steps, "steps", 1)
    lr = _check_real(lr, "lr", lambda v: v > 0, "finite and > 0")
    momentum = _check_real(momentum, "momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    if target_stability is not None:
        target_stability = _check_real(target_stability, "target_stability", lambda v: -1 <= v <= 1, "in [-1, 1]")
    if grad_clip is not None:
        grad_clip = _check_real(grad_clip, "grad_clip", lambda v: v > 0, "finite and > 0")
    if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype must be None, torch.float16 or torch.bfloat16, got {autocast_dtype!r}")
    for name, flag in (("nesterov", nesterov), ("renorm", renorm), ("checkpoint", checkpoint)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    for name, fn in (("callback", callback), ("progress", progress)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    chunk = check_max_batch(max_batch) or noise.shape[0]
    guidance = (
        check_guidance_scale(guidance_scale),
        check_guidance_scale(inversion_guidance_scale, "inversion_guidance_scale"),
    )
    if not bool(torch.isfinite(noise).all()):
        bad = (~torch.isfinite(noise)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"noise must be finite; samples {bad} of shape {tuple(noise.shape)} hold NaN/inf")

    B = noise.shape[0]
    master = torch.float64 if noise.dtype == torch.float64 else torch.float32
    eps = noise.detach().to(master).clone()  # [B, C, H, W] ε_k
    velocity = torch.zeros_like(eps)  # [B, C, H, W] v
    best_noise = eps.clone()  # [B, C, H, W]
    best_score = torch.full((B,), -math.inf, dtype=master, device=eps.device)  # [B]
    score = torch.full((B,), math.nan, dtype=master, device=eps.device)  # [B] s(ε_k), last known
    active = torch.ones(B, dtype=torch.bool, device=eps.device)  # [B]
    shell = math.sqrt(eps[0].numel()) if renorm else None  # √D: E‖ε‖ for ε ~ N(0, I_D)
    evaluate = _Evaluator(den, sched, cond, guidance, checkpoint, autocast_dtype, chunk)

    history: list[torch.Tensor] = []
    steps_run, stop_reason = 0, "steps"
    try:
        for k in range(steps + 1):
            # 1. s(ε_k) for the active samples, with g_k = ∇L(ε_k) unless this is the final evaluation
            idx = active.nonzero().flatten()  # [b]
            want_grad = k < steps
            s, g = evaluate(eps[idx], idx, want_grad)  # [b], [b, C, H, W] or None
            score[idx] = s.to(master)
            history.append(score.clone())
            # 2. best so far (before the update, so best_noise always has a measured score)
            better = score > best_score  # NaN compares False
            best_noise[better] = eps[better]
            best_score = torch.where(better, score, best_score)
            # 3. per-sample stop: target reached or the score / gradient turned non-finite
            grad_norm = torch.full((B,), math.nan, dtype=master, device=eps.device)
            done = ~torch.isfinite(s)
            if g is not None:
                gn = g.flatten(1).norm(dim=1)  # [b]
                grad_norm[idx] = gn
                done |= ~torch.isfinite(gn)
            if target_stability is not None:
                done |= s >= target_stability
            active[idx[done]] = False
            if progress is not None:
                progress(k + 1, steps + 1)
            if callback is not None:
                state = OptimizeState(k, steps, eps.clone(), score.clone(), best_score.clone(), grad_norm, active.clone())
                if callback(state) is False:
                    stop_reason = "callback"
                    break
            if not want_grad:
                break
            if not bool(active.any()):
                reached = target_stability is not None and bool((score >= target_stability).all())
                stop_reason = "target" if reached else "diverged"
                break
            # 4. clip, then the fused momentum update on the samples still active
            keep = ~done  # [b]
            idx, g, gn = idx[keep], g[keep], gn[keep]
            if grad_clip is not None:
                g = g * (grad_clip / gn.clamp_min(grad_clip)).to(g.dtype).reshape(-1, 1, 1, 1)
            x, v = eps[idx], velocity[idx]  # gathered copies: ε and v change together below
            ops.momentum_step_(x, g, v, lr=lr, momentum=momentum, nesterov=nesterov, renorm=shell)
            eps[idx], velocity[idx] = x, v
            steps_run += 1
    except KeyboardInterrupt:
        stop_reason = "interrupt"
    out = noise.dtype
    return OptimizeResult(
        noise=eps.to(out),
        best_noise=best_noise.to(out),
        best_score=best_score,
        history=torch.stack(history) if history else score.new_empty((0, B)),
        steps_run=steps_run,
        interrupted=stop_reason == "interrupt",
        stop_reason=stop_reason,
    )


def stability_grad(
    den: Denoiser,
    sched: Schedule,
    noise: torch.Tensor,  # [B, C, H, W] ε
    cond: Condition,  # batch B or 1
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    inversion_guidance_scale: float = DEFAULT_INVERSION_GUIDANCE_SCALE,
    *,
    checkpoint: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # s(ε) [B], ∇_ε L [B, C, H, W] with L = Σ_b (1 − s_b)
    """s(ε) and the gradient of L = Σ_b (1 − s_b(ε)) w.r.t. ε, through F and the cosine's first argument."""
    check_latents(noise, den)
    check_condition_batch(cond, noise.shape[0])
    evaluate = _Evaluator(den, sched, cond, (guidance_scale, inversion_guidance_scale), checkpoint, autocast_dtype,
                          noise.shape[0])
    idx = torch.arange(noise.shape[0], device=noise.device)
    return evaluate(noise.detach(), idx, want_grad=True)


class _Evaluator:
    """(s, ∇L) for rows ``idx`` of the batch, ``chunk`` samples per forward + backward."""

    def __init__(self, den, sched, cond, guidance, checkpoint, autocast_dtype, chunk):
        self.den = den if autocast_dtype is None else _AutocastDenoiser(den, autocast_dtype)
        self.sched, self.cond, self.guidance = sched, cond, guidance
        self.checkpoint, self.chunk = bool(checkpoint), chunk

    def __call__(
        self,
        x: torch.Tensor,  # [b, C, H, W] (detached)
        idx: torch.Tensor,  # [b] rows of the full batch (to pick per-sample conditions)
        want_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # [b], [b, C, H, W] or None
        scores, grads = [], []
        for lo in range(0, x.shape[0], self.chunk):
            xc, ic = x[lo : lo + self.chunk], idx[lo : lo + self.chunk]
            cc = self.cond.index(ic.to(self.cond.prompt_embeds.device)) if self.cond.batch_size != 1 else self.cond
            if not want_grad:
                with torch.no_grad():
                    scores.append(self._score(xc, cc))
                continue
            with torch.enable_grad():
                xc = xc.detach().requires_grad_(True)
                s = self._score(xc, cc)  # [c]  s = cos(ε, F(ε)): ε enters F and the cosine
                (g,) = torch.autograd.grad((1 - s).sum(), xc)  # ∂L/∂ε, L = Σ_b (1 − s_b)
            scores.append(s.detach())
            grads.append(g)
        s = torch.cat(scores) if len(scores) > 1 else scores[0]
        return s, (None if not want_grad else torch.cat(grads) if len(grads) > 1 else grads[0])

    def _score(self, x: torch.Tensor, cond: Condition) -> torch.Tensor:  # [c]
        w, w_inv = self.guidance
        return stability_score(self.den, self.sched, x, cond, w, w_inv, checkpoint=self.checkpoint)


class _AutocastDenoiser:
    """The denoiser under ``torch.autocast``: only the model runs in 16 bits; the latents, the DDIM moves
    and the cosine keep the master dtype. The autocast state is entered inside each call, so a checkpointed
    call is recomputed in backward under the same state."""

    def __init__(self, den: Denoiser, dtype: torch.dtype):
        self.den, self.autocast_dtype = den, dtype

    def __getattr__(self, name):  # in_channels, sample_size, ... of the wrapped denoiser
        if name == "den":
            raise AttributeError(name)
        return getattr(self.den, name)

    @property
    def autograd(self):
        """The wrapped backend's gradient path (auto, ONNX Runtime: the torch UNet) under the same autocast."""
        inner = getattr(self.den, "autograd", None)
        return None if inner is None else _AutocastDenoiser(inner, self.autocast_dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:  # [B, C, H, W]
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            out = self.den(x, t, cond)
        return out.to(x.dtype)


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Diagnostic: the bytes autograd saves for backward while active (``with SavedBytes() as m: ...``).

    ``total``: every saved tensor's ``numel·element_size`` added up; ``peak``: the most alive at once (a
    saved tensor dies with the graph node holding it). Tensors saved inside ``torch.utils.checkpoint``
    regions are not seen (they go to its own hooks); its inputs are.
    """

    def __init__(self):
        self.total = self.live = self.peak = 0

        def pack(t: torch.Tensor):
            n = t.numel() * t.element_size()
            self.total += n
            self.live += n
            self.peak = max(self.peak, self.live)
            return _Saved(t, n, self)

        super().__init__(pack, lambda saved: saved.tensor)

    def __enter__(self) -> "SavedBytes":
        super().__enter__()
        return self


class _Saved:
    __slots__ = ("tensor", "nbytes", "counter")

    def __init__(self, tensor: torch.Tensor, nbytes: int, counter: SavedBytes):
        self.tensor, self.nbytes, self.counter = tensor, nbytes, counter

    def __del__(self):
        self.counter.live -= self.nbytes


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return value


def _check_real(value, name: str, ok, text: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be {text}, got {value!r}")
    return value

