"""noisefast.ops.momentum_step_ (fused in-place kernel) against noisefast.ref.momentum_step_."""

from __future__ import annotations

import math

import pytest
import torch
from _ops_helpers import (DEVICES, assert_flash_close, over_devices_dtypes_shapes, rand_per_sample, randn,
                          requires_extension, skip_unsupported)
from _tolerance import eps

from noisefast import ops, ref

pytestmark = requires_extension

# (nesterov, lr: "scalar" | "perB", renorm: None | "scalar" | "perB")
CONFIGS = [(False, "scalar", None), (True, "perB", None), (False, "scalar", "scalar"), (True, "perB", "perB")]
CONFIG_IDS = [f"{'nesterov' if n else 'heavyball'}-lr{lr}-renorm{r}" for n, lr, r in CONFIGS]


def make_case(shape, dtype, device, config, seed):
    nesterov, lr_kind, renorm_kind = config
    B, N = shape[0], math.prod(shape[1:])
    x, g, v = (randn(shape, dtype, device, seed + i) for i in range(3))
    # Algorithm 2's step (lr 100) with renormalisation; small per-sample steps without.
    lr = 100.0 if lr_kind == "scalar" and renorm_kind else (0.3 if lr_kind == "scalar" else rand_per_sample(B, 0.01, 1.0, seed))
    renorm = {None: None, "scalar": math.sqrt(N), "perB": rand_per_sample(B, 0.5, 2.0, seed + 5) * math.sqrt(N)}
    return (x, g, v), dict(lr=lr, momentum=0.5, nesterov=nesterov, renorm=renorm[renorm_kind])


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@over_devices_dtypes_shapes
def test_matches_reference(device, dtype, shape, config):
    skip_unsupported(device, dtype)
    (x, g, v), kwargs = make_case(shape, dtype, device, config, seed=sum(shape))
    x64, v64 = x.double(), v.double()
    ref.momentum_step_(x64, g.double(), v64, **kwargs)
    x_torch, v_torch = x.clone(), v.clone()
    ref.momentum_step_(x_torch, g, v_torch, **kwargs)
    returned = ops.momentum_step_(x, g, v, **kwargs)
    assert returned is x
    assert_flash_close("momentum x", x, x64, x_torch)
    assert_flash_close("momentum velocity", v, v64, v_torch)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_every_low_precision_value_rounds_like_torch(device, dtype):
    """All 65536 bit patterns (subnormals, ±inf, NaN included) as the gradient, μ = 0, lr = 1:
    v' = g must round-trip exactly, and x' = x − g must round once, exactly as torch does."""
    g = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype).to(device).reshape(4, -1)
    x = randn(g.shape, dtype, device, seed=1)
    v = randn(g.shape, dtype, device, seed=2)
    want_x = (x.float() - g.float()).to(dtype)
    ops.momentum_step_(x, g, v, lr=1.0, momentum=0.0)
    torch.testing.assert_close(v, g, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(x, want_x, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_renorm_sets_each_norm(device):
    (x, g, v), kwargs = make_case((5, 4, 16, 16), torch.float32, device, CONFIGS[3], seed=3)
    ops.momentum_step_(x, g, v, **kwargs)
    # error model: each stored element is x·(ρ/‖x‖) rounded to float32 (≤ 2 eps32 with the scale's rounding), the
    # check's norm is taken in float64; Σx² is accumulated in double on the CPU, in float32 per CUDA thread over
    # at most N terms (recursive-summation bound N·eps32)
    N = x[0].numel()
    rtol = eps(torch.float32) * (4 + (N if device == "cuda" else 0))
    torch.testing.assert_close(x.double().flatten(1).norm(dim=1), kwargs["renorm"].to(device).double(), rtol=rtol, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_tensors_are_updated_in_place(device):
    (x, g, v), kwargs = make_case((3, 8, 6), torch.float32, device, CONFIGS[3], seed=4)
    x_ref, v_ref = x.clone(), v.clone()
    ref.momentum_step_(x_ref, g, v_ref, **kwargs)
    xt, gt, vt = (t.transpose(1, 2) for t in (x, g, v))  # views: the results must land in x and v
    ops.momentum_step_(xt, gt, vt, **kwargs)
    torch.testing.assert_close(x, x_ref)
    torch.testing.assert_close(v, v_ref)


def test_version_counters_are_bumped():
    """In-place writes are visible to autograd's saved-tensor checks, as for torch's own in-place ops."""
    (x, g, v), kwargs = make_case((2, 4, 4), torch.float32, "cpu", CONFIGS[0], seed=5)
    before = (x._version, v._version)
    ops.momentum_step_(x, g, v, **kwargs)
    assert x._version > before[0] and v._version > before[1]


def test_leaf_requiring_grad_is_updated_under_no_grad():
    """Algorithm 2's use: the noise is a leaf that requires grad; the step runs under no_grad."""
    x = randn((2, 4, 4), torch.float32, "cpu", 6).requires_grad_(True)
    g, v = randn((2, 4, 4), torch.float32, "cpu", 7), torch.zeros(2, 4, 4)
    x_ref = x.detach().clone()
    with torch.no_grad():
        ops.momentum_step_(x, g, v, lr=0.1, momentum=0.5)
    torch.testing.assert_close(x.detach(), x_ref - 0.1 * g)


def test_renorm_does_not_depend_on_thread_count():
    (x, g, v), kwargs = make_case((2, 4, 100, 100), torch.float32, "cpu", CONFIGS[3], seed=8)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            xc, vc = x.clone(), v.clone()
            ops.momentum_step_(xc, g, vc, **kwargs)
            results.append(xc)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_opcheck():
    (x, g, v), kwargs = make_case((3, 4, 5, 5), torch.float32, "cpu", CONFIGS[3], seed=9)
    lr, renorm = kwargs["lr"].float(), kwargs["renorm"].float()
    torch.library.opcheck(ops._momentum_op, (x, g, v, lr, 0.5, True, renorm))
    torch.library.opcheck(ops._momentum_op, (x, g, v, lr, 0.9, False, None))
