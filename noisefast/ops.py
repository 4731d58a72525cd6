"""Fused kernels (csrc/) as ``torch.library`` custom ops, with the signatures of ``noisefast.ref``.

Public functions (same signatures and results as ``noisefast.ref``):

* :func:`ddim_move` — guided DDIM move, epsilon or v prediction, optional x̂₀ clipping;
* :func:`cosine_similarity` — per-sample cosine ``[B]`` over all non-batch dims;
* :func:`momentum_step_` — in-place heavy-ball / Nesterov step with optional renormalisation.

Conventions:

* Tensors are ``[B, ...]`` with float32, float16, bfloat16 or float64 storage (math in float32 or
  wider). Non-contiguous inputs are accepted and copied to contiguous memory first; the in-place
  ``momentum_step_`` writes its results back into the caller's (non-contiguous) tensors.
* ``alpha_from``, ``alpha_to``, ``guidance_scale``, ``lr`` and ``renorm`` are Python numbers or
  per-sample ``[B]`` tensors (any device). They are treated as constants: no gradient flows to them.
  Gradients flow to ``x``, ``model_out`` and ``model_out_uncond`` (ddim_move) and to ``a``, ``b``
  (cosine_similarity), computed by fused backward kernels.
* CPU tensors run ``noisefast._C`` (on ``torch.get_num_threads()`` threads), CUDA tensors
  ``noisefast._C_cuda`` on the current stream. float64 on CUDA, other devices, or a missing extension
  run the ``noisefast.ref`` code instead (the last two with one ``ExtensionFallbackWarning``).
* Under autograd, torch.compile, dispatch modes or functorch transforms the custom ops are dispatched;
  plain eager calls without autograd call the same kernel function directly (see ``_direct``).
* Bad input raises ``TypeError`` (types, dtypes) or ``ValueError`` (shapes, devices, values) naming
  what was passed (the checks: ``noisefast.op_args``). Checking per-sample tensors' values reads them
  (a device sync on CUDA).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from noisefast import _ext, ref
from noisefast.op_args import FINITE, POSITIVE, UNIT, UNIT_EPS_FROM, acc_dtype, check_no_overlap, check_tensors, coef

__all__ = ["cosine_similarity", "ddim_move", "momentum_step_"]

def _kernels(x: Tensor):
    """The extension module for x's device, or None: run the reference (fp64 on CUDA, fallback)."""
    if x.device.type == "cuda" and x.dtype == torch.float64:
        return None  # the CUDA kernels have no float64 path; ref.py is exact there
    return _ext.kernels_for(x.device)


# --- launching -----------------------------------------------------------------------------------------


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _sizes(x: Tensor) -> dict:
    B = x.shape[0]
    return {"B": B, "N": x.numel() // B if B else 0, "dtype": _ext.DTYPE_CODES[x.dtype]}


def _run(device: torch.device, kernel: str, /, **args) -> None:
    """Calls kernel on device: CPU with torch's thread count, CUDA on the current stream."""
    module = _ext.kernels_for(device)
    if module is None:
        raise RuntimeError(f"noisefast.ops: no fused kernels for {device} (see noisefast.build_info())")
    fn = getattr(module, kernel)
    if device.type == "cuda":
        with torch.cuda.device(device):
            fn(**args, stream=torch.cuda.current_stream(device).cuda_stream)
    else:
        fn(**args, nthreads=torch.get_num_threads())


def _workspace(x: Tensor, kernel: str) -> Tensor | None:
    """Scratch for a reduction kernel on CUDA; the CPU kernels allocate their own (None)."""
    if x.device.type != "cuda":
        return None
    nbytes = getattr(_ext.kernels_for(x.device), f"{kernel}_workspace_bytes")(x.shape[0], _sizes(x)["N"])
    return torch.empty(nbytes, dtype=torch.uint8, device=x.device)


def _contiguous(*tensors: Tensor | None) -> list[Tensor | None]:
    return [None if t is None else t.contiguous() for t in tensors]


def _direct(*tensors: Tensor | None) -> bool:
    """Whether an eager call may run the kernel function itself rather than dispatch the custom op.

    True when nothing needs the dispatcher: no autograd graph to record, no tracing (torch.compile),
    no dispatch mode (FakeTensor, functionalization), no functorch transform (vmap, grad), plain
    tensors only. The custom op would then call the very same function, after 10-30 µs of Python
    dispatch — more than the kernel itself takes on a 64×64 latent.
    """
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    grad_mode = torch.is_grad_enabled()
    return all(t is None or (type(t) is Tensor and not (grad_mode and t.requires_grad)) for t in tensors)


# --- ddim_move -----------------------------------------------------------------------------------------


def _ddim_move_impl(
    x: Tensor, model_out: Tensor, model_out_uncond: Tensor | None, alpha_from: Tensor, alpha_to: Tensor,
    guidance: Tensor, prediction_type: str, clip_sample_range: float | None,
) -> Tensor:
    x, m_c, m_u = _contiguous(x, model_out, model_out_uncond)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _run(x.device, "ddim_move", out=_ptr(out), x=_ptr(x), m_c=_ptr(m_c), m_u=_ptr(m_u), alpha_from=_ptr(alpha_from),
         alpha_to=_ptr(alpha_to), guidance=_ptr(guidance), v_prediction=prediction_type == "v_prediction",
         flow=prediction_type == "flow", clip_range=clip_sample_range, **_sizes(x))
    return out


_ddim_move_op = torch.library.custom_op("noisefast::ddim_move", _ddim_move_impl, mutates_args=())


@_ddim_move_op.register_fake
def _(x, model_out, model_out_uncond, alpha_from, alpha_to, guidance, prediction_type, clip_sample_range):
    return x.new_empty(x.shape)


@torch.library.custom_op("noisefast::ddim_move_backward", mutates_args=())
def _ddim_move_backward_op(
    grad: Tensor, x: Tensor | None, model_out: Tensor | None, model_out_uncond: Tensor | None, alpha_from: Tensor,
    alpha_to: Tensor, guidance: Tensor, prediction_type: str, clip_sample_range: float | None, has_uncond: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(∂L/∂x, ∂L/∂m_c, ∂L/∂m_u); the last is empty without guidance. x/model_out(s) only with clipping."""
    grad, x, m_c, m_u = _contiguous(grad, x, model_out, model_out_uncond)
    dx, dm_c = torch.empty_like(grad), torch.empty_like(grad)
    dm_u = torch.empty_like(grad) if has_uncond else grad.new_empty(0)
    _run(grad.device, "ddim_move_backward", dx=_ptr(dx), dm_c=_ptr(dm_c), dm_u=_ptr(dm_u if has_uncond else None),
         grad=_ptr(grad), x=_ptr(x), m_c=_ptr(m_c), m_u=_ptr(m_u), alpha_from=_ptr(alpha_from),
         alpha_to=_ptr(alpha_to), guidance=_ptr(guidance), v_prediction=prediction_type == "v_prediction",
         flow=prediction_type == "flow", clip_range=clip_sample_range, **_sizes(grad))
    return dx, dm_c, dm_u


@_ddim_move_backward_op.register_fake
def _(grad, x, model_out, model_out_uncond, alpha_from, alpha_to, guidance, prediction_type, clip_sample_range,
      has_uncond):
    return grad.new_empty(grad.shape), grad.new_empty(grad.shape), grad.new_empty(grad.shape if has_uncond else (0,))


def _ddim_move_setup(ctx, inputs, output):
    x, m_c, m_u, alpha_from, alpha_to, guidance, prediction_type, clip = inputs
    clipped = clip is not None  # only the clamp mask needs the inputs themselves
    ctx.save_for_backward(x if clipped else None, m_c if clipped else None, m_u if clipped else None,
                          alpha_from, alpha_to, guidance)
    ctx.prediction_type, ctx.clip, ctx.has_uncond = prediction_type, clip, m_u is not None


def _ddim_move_backward(ctx, grad):
    x, m_c, m_u, alpha_from, alpha_to, guidance = ctx.saved_tensors
    dx, dm_c, dm_u = _ddim_move_backward_op(grad, x, m_c, m_u, alpha_from, alpha_to, guidance, ctx.prediction_type,
                                            ctx.clip, ctx.has_uncond)
    return dx, dm_c, dm_u if ctx.has_uncond else None, None, None, None, None, None


_ddim_move_op.register_autograd(_ddim_move_backward, setup_context=_ddim_move_setup)


def ddim_move(
    x: Tensor,  # [B, ...] latent at cumulative alpha `alpha_from`
    model_out: Tensor,  # [B, ...] conditional model output m_c
    alpha_from,  # float or [B]: a = ᾱ_from, in [0, 1] ((0, 1] for epsilon prediction without clipping)
    alpha_to,  # float or [B]: a' = ᾱ_to, in [0, 1]
    *,
    model_out_uncond: Tensor | None = None,  # [B, ...] unconditional model output m_u
    guidance_scale=1.0,  # float or [B]: w (finite)
    prediction_type: str = "epsilon",
    clip_sample_range: float | None = None,
) -> Tensor:  # [B, ...] latent at cumulative alpha `alpha_to`
    """One guided DDIM move (η = 0) from ᾱ_from to ᾱ_to in one fused pass; see ``noisefast.ref.ddim_move``.

    ``prediction_type="flow"``: the flow-matching Euler move x' = x + (σ' − σ)·v with ``alpha_from`` = σ and
    ``alpha_to`` = σ' (each in [0, 1]) and ``model_out`` the velocity; no clipping.

    ᾱ = 0 (the last timestep of a zero-terminal-SNR schedule, ``rescale_betas_zero_snr=True``) is accepted
    wherever the move is defined: v prediction (x̂₀ = −m, ε̂ = x at ᾱ_from = 0), any ᾱ_to = 0 (x' = ε̂),
    and epsilon prediction from ᾱ_from = 0 with clipping (x̂₀ = ±r by the sign of x − m, as diffusers'
    clamp of ±inf; the gradient through the clamped x̂₀ is 0).
    """
    op = "ddim_move"
    check_tensors(op, 1, x=x, model_out=model_out, model_out_uncond=model_out_uncond)
    if prediction_type not in ref.PREDICTION_TYPES:
        raise ValueError(f"{op}: prediction_type must be one of {ref.PREDICTION_TYPES}, got {prediction_type!r}")
    if clip_sample_range is not None:
        if isinstance(clip_sample_range, bool) or not isinstance(clip_sample_range, (int, float)):
            raise TypeError(f"{op}: clip_sample_range must be None or a float, got {type(clip_sample_range).__name__}")
        if not POSITIVE.scalar_ok(float(clip_sample_range)):
            raise ValueError(f"{op}: clip_sample_range must be {POSITIVE.text}; got {clip_sample_range!r}")
        clip_sample_range = float(clip_sample_range)
        if prediction_type == "flow":
            raise ValueError(f"{op}: the flow move has no x̂₀ to clip: clip_sample_range must be None")
    divides = prediction_type == "epsilon" and clip_sample_range is None  # x̂₀ = (x − √(1−a)·m)/√a, unclamped
    a_from = coef(op, "alpha_from", alpha_from, x, UNIT_EPS_FROM if divides else UNIT)
    a_to = coef(op, "alpha_to", alpha_to, x, UNIT)
    w = coef(op, "guidance_scale", guidance_scale, x, FINITE)
    if _kernels(x) is None:
        return ref.ddim_move(x, model_out, a_from, a_to, model_out_uncond=model_out_uncond, guidance_scale=w,
                             prediction_type=prediction_type, clip_sample_range=clip_sample_range)
    fn = _ddim_move_impl if _direct(x, model_out, model_out_uncond) else _ddim_move_op
    return fn(x, model_out, model_out_uncond, a_from, a_to, w, prediction_type, clip_sample_range)


# --- cosine_similarity ---------------------------------------------------------------------------------


def _cosine_impl(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(cos [B], stats [B, 3] = (⟨a,b⟩, ‖a‖², ‖b‖²) in the accumulation dtype)."""
    a, b = _contiguous(a, b)
    B = a.shape[0]
    cos = torch.empty(B, dtype=a.dtype, device=a.device)
    stats = torch.empty(B, 3, dtype=acc_dtype(a.dtype), device=a.device)
    workspace = _workspace(a, "cosine")  # referenced until the kernel has run
    _run(a.device, "cosine", cos=_ptr(cos), stats=_ptr(stats), a=_ptr(a), b=_ptr(b), workspace=_ptr(workspace),
         **_sizes(a))
    return cos, stats


_cosine_op = torch.library.custom_op("noisefast::cosine_similarity", _cosine_impl, mutates_args=())


@_cosine_op.register_fake
def _(a, b):
    return a.new_empty(a.shape[0]), a.new_empty((a.shape[0], 3), dtype=acc_dtype(a.dtype))


@torch.library.custom_op("noisefast::cosine_similarity_backward", mutates_args=())
def _cosine_backward_op(grad: Tensor, a: Tensor, b: Tensor, stats: Tensor) -> tuple[Tensor, Tensor]:
    grad, a, b, stats = _contiguous(grad, a, b, stats)
    da, db = torch.empty_like(a), torch.empty_like(b)
    _run(a.device, "cosine_backward", da=_ptr(da), db=_ptr(db), grad=_ptr(grad), a=_ptr(a), b=_ptr(b), stats=_ptr(stats),
         **_sizes(a))
    return da, db


@_cosine_backward_op.register_fake
def _(grad, a, b, stats):
    return a.new_empty(a.shape), b.new_empty(b.shape)


def _cosine_setup(ctx, inputs, output):
    a, b = inputs
    stats = output[1]
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(a, b, stats)


def _cosine_backward(ctx, grad_cos, grad_stats):
    a, b, stats = ctx.saved_tensors
    return _cosine_backward_op(grad_cos, a, b, stats)


_cosine_op.register_autograd(_cosine_backward, setup_context=_cosine_setup)


def cosine_similarity(
    a: Tensor,  # [B, ...]
    b: Tensor,  # [B, ...]
) -> Tensor:  # [B]
    """Per-sample ⟨a, b⟩ / max(‖a‖·‖b‖, 1e-12) over all non-batch dims in one pass; zero vectors give 0."""
    check_tensors("cosine_similarity", 2, a=a, b=b)
    if _kernels(a) is None:
        return ref.cosine_similarity(a, b)
    return (_cosine_impl if _direct(a, b) else _cosine_op)(a, b)[0]


# --- momentum_step_ ------------------------------------------------------------------------------------


def _momentum_impl(
    x: Tensor, grad: Tensor, velocity: Tensor, lr: Tensor, momentum: float, nesterov: bool, renorm: Tensor | None,
) -> None:
    xc, g, vc = _contiguous(x, grad, velocity)  # copies only for non-contiguous x / velocity ...
    workspace = _workspace(xc, "momentum") if renorm is not None else None  # referenced until the kernel has run
    _run(xc.device, "momentum_step", x=_ptr(xc), grad=_ptr(g), velocity=_ptr(vc), lr=_ptr(lr), renorm=_ptr(renorm),
         workspace=_ptr(workspace), momentum=momentum, nesterov=nesterov, **_sizes(xc))
    if xc is not x:  # ... whose results go back into the caller's tensors
        x.copy_(xc)
    if vc is not velocity:
        velocity.copy_(vc)


_momentum_op = torch.library.custom_op("noisefast::momentum_step_", _momentum_impl, mutates_args=("x", "velocity"))


@_momentum_op.register_fake
def _(x, grad, velocity, lr, momentum, nesterov, renorm):
    return None


def momentum_step_(
    x: Tensor,  # [B, ...] updated in place
    grad: Tensor,  # [B, ...]
    velocity: Tensor,  # [B, ...] updated in place
    *,
    lr,  # float or [B] (finite)
    momentum: float,  # μ (finite)
    nesterov: bool = False,
    renorm=None,  # None, or float / [B] (> 0): target per-sample norm of x after the step
) -> Tensor:
    """v ← μ·v + g;  x ← x − lr·v  (Nesterov: x ← x − lr·(g + μ·v)); optionally x ← x·ρ/‖x‖. Returns x."""
    op = "momentum_step_"
    check_tensors(op, 1, x=x, grad=grad, velocity=velocity)
    if not torch.compiler.is_compiling() and x.numel():  # refused before anything is written: no half-applied step
        check_no_overlap(op, ("x", "velocity"), x=x, grad=grad, velocity=velocity)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"{op}: momentum must be a float, got {type(momentum).__name__}")
    if not math.isfinite(momentum):
        raise ValueError(f"{op}: momentum must be finite, got {momentum!r}")
    lr_t = coef(op, "lr", lr, x, FINITE)
    renorm_t = None if renorm is None else coef(op, "renorm", renorm, x, POSITIVE)
    if _kernels(x) is None:
        return ref.momentum_step_(x, grad, velocity, lr=lr_t, momentum=float(momentum), nesterov=bool(nesterov),
                                  renorm=renorm_t)
    args = (x, grad, velocity, lr_t, float(momentum), bool(nesterov), renorm_t)
    if _direct(x, grad, velocity):
        _momentum_impl(*args)
        torch.autograd.graph.increment_version((x, velocity))  # as the dispatcher does for in-place ops
    else:
        _momentum_op(*args)
    return x
