"""noisefast.ops.ddim_move (fused kernel + fused backward) against noisefast.ref.ddim_move."""

from __future__ import annotations

import math

import pytest
import torch
from _ops_helpers import (DEVICES, assert_flash_close, over_devices_dtypes_shapes, rand_per_sample, randn,
                          requires_extension, skip_unsupported, to64)
from _tolerance import GRADCHECK_F64

from noisefast import ops, ref

pytestmark = requires_extension

# (prediction_type, with model_out_uncond, clip_sample_range, per-sample coefficients, direction)
CONFIGS = [
    ("epsilon", False, None, False, "denoise"),
    ("epsilon", True, 1.0, True, "denoise"),
    ("v_prediction", True, None, False, "invert"),
    ("v_prediction", False, 1.0, True, "invert"),
    ("v_prediction", True, 1.5, False, "denoise"),
    ("epsilon", True, None, True, "invert"),
    # the flow-matching Euler move x' = x + (σ' − σ)·v (the coefficient pair read as σ, σ')
    ("flow", True, None, True, "invert"),
    ("flow", False, None, False, "denoise"),
]
CONFIG_IDS = [f"{p[:3]}-{'cfg' if u else 'cond'}-clip{c}-{'perB' if s else 'scalar'}-{d}" for p, u, c, s, d in CONFIGS]


def make_case(shape, dtype, device, config, seed=0, requires_grad=False):
    """Inputs (dtype, device) and keyword arguments for one DDIM move."""
    prediction_type, uncond, clip, per_sample, direction = config
    B = shape[0]
    x = randn(shape, dtype, device, seed)
    m_c = randn(shape, dtype, device, seed + 1)
    m_u = randn(shape, dtype, device, seed + 2) if uncond else None
    if per_sample:  # ᾱ spans the whole schedule: 0.02 (noisy end) … 1.0 (set_alpha_to_one)
        lo, hi = rand_per_sample(B, 0.02, 0.5, seed + 3, device), rand_per_sample(B, 0.55, 1.0, seed + 4, device)
        w = rand_per_sample(B, 0.0, 8.0, seed + 5, device)
    else:
        lo, hi, w = 0.3, 1.0, 5.5
    a_from, a_to = (lo, hi) if direction == "denoise" else (hi, lo)
    for t in (x, m_c, m_u):
        if t is not None:
            t.requires_grad_(requires_grad)
    kwargs = dict(model_out_uncond=m_u, guidance_scale=w, prediction_type=prediction_type, clip_sample_range=clip)
    return (x, m_c, a_from, a_to), kwargs


def as64(args, kwargs):
    return [to64(a) for a in args], {k: to64(v) for k, v in kwargs.items()}


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@over_devices_dtypes_shapes
def test_forward_matches_reference(device, dtype, shape, config):
    skip_unsupported(device, dtype)
    args, kwargs = make_case(shape, dtype, device, config, seed=sum(shape))
    out = ops.ddim_move(*args, **kwargs)
    want = ref.ddim_move(*as64(args, kwargs)[0], **as64(args, kwargs)[1])
    assert_flash_close("ddim_move", out, want, ref.ddim_move(*args, **kwargs))


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_backward_matches_reference(device, dtype, config):
    """Fused backward kernel vs autograd through ref.py, in the same flash-style bound."""
    shape = (3, 4, 6, 10)
    (x, m_c, a_from, a_to), kwargs = make_case(shape, dtype, device, config, seed=7)
    grad_out = randn(shape, dtype, device, seed=99)
    grads = {}
    for name, dt in (("kernel", dtype), ("torch", dtype), ("fp64", torch.float64)):
        leaves = [None if t is None else t.detach().to(dt).requires_grad_(True)
                  for t in (x, m_c, kwargs["model_out_uncond"])]
        fn = ops.ddim_move if name == "kernel" else ref.ddim_move
        out = fn(leaves[0], leaves[1], a_from, a_to, **{**kwargs, "model_out_uncond": leaves[2]})
        out.backward(grad_out.to(dt))
        grads[name] = [t.grad for t in leaves if t is not None]
    for i, (g_kernel, g_torch, g64) in enumerate(zip(grads["kernel"], grads["torch"], grads["fp64"])):
        assert_flash_close(f"ddim_move grad {i}", g_kernel, g64, g_torch)


def x0_hat(x, m, a, prediction_type):
    """x̂₀ before clipping (the clamp's input), [B, ...]."""
    a = torch.as_tensor(a, dtype=x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return (x - (1 - a).sqrt() * m) / a.sqrt() if prediction_type == "epsilon" else a.sqrt() * x - (1 - a).sqrt() * m


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_gradcheck_float64(config):
    (x, m_c, a_from, a_to), kwargs = make_case((2, 3, 2, 3), torch.float64, "cpu", config, seed=3, requires_grad=True)
    m_u = kwargs.pop("model_out_uncond")
    if kwargs["clip_sample_range"] is not None:
        # Put the clip range where no x̂₀ is near ±r: the clamp is not differentiable there.
        with torch.no_grad():
            w = torch.as_tensor(kwargs["guidance_scale"], dtype=torch.float64).reshape(-1, 1, 1, 1)
            m = m_c if m_u is None else m_u + w * (m_c - m_u)
            mags = x0_hat(x, m, a_from, kwargs["prediction_type"]).abs().flatten()
        candidates = torch.linspace(0.2, 0.8, 61, dtype=torch.float64) * mags.max()
        gaps = (mags[None, :] - candidates[:, None]).abs().min(dim=1).values
        kwargs["clip_sample_range"] = candidates[gaps.argmax()].item()
        assert gaps.max() > 1e-3 and (mags > kwargs["clip_sample_range"]).any()  # clipping is active

    def fn(x, m_c, *m_u_opt):
        return ops.ddim_move(x, m_c, a_from, a_to, model_out_uncond=m_u_opt[0] if m_u_opt else None, **kwargs)

    inputs = (x, m_c) if m_u is None else (x, m_c, m_u)
    assert torch.autograd.gradcheck(fn, inputs, **GRADCHECK_F64)


@pytest.mark.parametrize("device", DEVICES)
def test_direct_call_equals_dispatched_op(device):
    """The no-autograd eager fast path and the custom op (taken when grad is needed) agree exactly."""
    args, kwargs = make_case((7, 4, 9, 11), torch.float32, device, CONFIGS[1], seed=5)
    direct = ops.ddim_move(*args, **kwargs)
    x = args[0].clone().requires_grad_(True)
    dispatched = ops.ddim_move(x, *args[1:], **kwargs)
    assert dispatched.grad_fn is not None
    torch.testing.assert_close(dispatched.detach(), direct, rtol=0, atol=0)


def test_backward_after_a_call_in_inference_mode():
    """Scoring runs under inference_mode, optimisation then differentiates the same moves."""
    args, kwargs = make_case((2, 4, 3, 3), torch.float32, "cpu", CONFIGS[0], seed=2)
    with torch.inference_mode():
        ops.ddim_move(*args, **kwargs)
    x = args[0].clone().requires_grad_(True)
    ops.ddim_move(x, *args[1:], **kwargs).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_no_gradient_to_alphas_and_guidance():
    args, kwargs = make_case((2, 4, 3, 3), torch.float32, "cpu", CONFIGS[1], requires_grad=True)
    a_from = args[2].clone().float().requires_grad_(True)
    kwargs["guidance_scale"] = kwargs["guidance_scale"].clone().float().requires_grad_(True)
    ops.ddim_move(args[0], args[1], a_from, args[3], **kwargs).sum().backward()
    assert args[0].grad is not None and kwargs["model_out_uncond"].grad is not None
    assert a_from.grad is None and kwargs["guidance_scale"].grad is None


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_empty_inputs(device):
    x = randn((4, 6, 5, 2), torch.float32, device, 1).permute(0, 3, 2, 1)  # [4, 2, 5, 6], not contiguous
    m = randn((4, 2, 5, 6), torch.float32, device, 2)
    assert not x.is_contiguous()
    torch.testing.assert_close(ops.ddim_move(x, m, 0.4, 0.7), ref.ddim_move(x, m, 0.4, 0.7))
    empty = torch.empty(0, 4, 8, 8, device=device)
    assert ops.ddim_move(empty, empty, 0.4, 0.7).shape == (0, 4, 8, 8)


@pytest.mark.parametrize("uncond, clip, prediction", [(False, None, "epsilon"), (True, 1.0, "epsilon"),
                                                      (True, None, "flow")])
def test_opcheck(uncond, clip, prediction):
    B, shape = 3, (3, 4, 5, 5)
    x, m_c = randn(shape, torch.float32, "cpu", 1), randn(shape, torch.float32, "cpu", 2)
    m_u = randn(shape, torch.float32, "cpu", 3) if uncond else None
    for t in (x, m_c, m_u):
        if t is not None:
            t.requires_grad_(True)
    coefs = (torch.full((B,), 0.3), torch.full((B,), 0.9), torch.full((B,), 2.5))
    torch.library.opcheck(ops._ddim_move_op, (x, m_c, m_u, *coefs, prediction, clip))
    grad = randn(shape, torch.float32, "cpu", 4)
    saved = (x.detach(), m_c.detach(), None if m_u is None else m_u.detach()) if clip else (None, None, None)
    backward_prediction = "v_prediction" if prediction == "epsilon" else prediction
    torch.library.opcheck(ops._ddim_move_backward_op, (grad, *saved, *coefs, backward_prediction, clip, uncond))


def test_inversion_undoes_denoising_without_clipping():
    """With the model output held fixed, the epsilon move with swapped alphas is its exact inverse."""
    x = randn((2, 4, 8, 8), torch.float64, "cpu", 11)
    m = randn((2, 4, 8, 8), torch.float64, "cpu", 12)
    back = ops.ddim_move(ops.ddim_move(x, m, 0.2, 0.9), m, 0.9, 0.2)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12 * math.sqrt(x.numel()))


def test_flow_move_is_euler_and_its_reverse():
    """The flow move is x + (σ' − σ)·v exactly as diffusers' FlowMatchEulerDiscreteScheduler.step computes it
    (float32 dt = σ' − σ, then sample + dt·v), and the move back with the same velocity undoes it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(4)
    x = randn((2, 4, 8, 8), torch.float32, "cpu", 21)
    v = randn((2, 4, 8, 8), torch.float32, "cpu", 22)
    for i, t in enumerate(sched.timesteps[:2]):
        s_from, s_to = sched.sigmas[i].item(), sched.sigmas[i + 1].item()
        want = sched.step(v, t, x, return_dict=False)[0]
        got = ops.ddim_move(x, v, s_from, s_to, prediction_type="flow")
        # one rounding of the multiply-add may be fused (FMA) in the kernel: ≤ 1 ulp of |x'| per element
        assert (got - want).abs().max() <= 2.0**-23 * want.abs().max()
        x = want
    x64, v64 = to64(x), to64(v)
    back = ops.ddim_move(ops.ddim_move(x64, v64, 0.8, 0.3, prediction_type="flow"), v64, 0.3, 0.8, prediction_type="flow")
    torch.testing.assert_close(back, x64, rtol=0, atol=1e-12 * math.sqrt(x64.numel()))


def test_flow_move_refuses_clipping():
    x = randn((2, 4, 3, 3), torch.float32, "cpu", 1)
    with pytest.raises(ValueError, match="clip"):
        ops.ddim_move(x, x, 0.5, 0.2, prediction_type="flow", clip_sample_range=1.0)
