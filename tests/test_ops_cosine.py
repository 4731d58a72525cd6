"""noisefast.ops.cosine_similarity (fused one-pass kernel + fused backward) against noisefast.ref."""

from __future__ import annotations

import pytest
import torch
from _ops_helpers import (DEVICES, assert_flash_close, over_devices_dtypes_shapes, randn, requires_extension,
                          skip_unsupported)
from _tolerance import GRADCHECK_F64

from noisefast import ops, ref

pytestmark = requires_extension


def pair(shape, dtype, device, seed):
    """b correlated with a (cosines spread over (−1, 1), not all ≈ 0)."""
    a = randn(shape, torch.float32, "cpu", seed)
    noise = randn(shape, torch.float32, "cpu", seed + 1)
    mix = torch.linspace(-0.9, 0.9, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    b = mix * a + (1 - mix.abs()) * noise
    return a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


@over_devices_dtypes_shapes
def test_forward_matches_reference(device, dtype, shape):
    skip_unsupported(device, dtype)
    a, b = pair(shape, dtype, device, seed=sum(shape))
    out = ops.cosine_similarity(a, b)
    assert out.shape == (shape[0],)
    assert_flash_close("cosine", out, ref.cosine_similarity(a.double(), b.double()), ref.cosine_similarity(a, b))


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (7, 4, 9, 11), (2, 4, 75, 67)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_backward_matches_reference(device, dtype, shape):
    a, b = pair(shape, dtype, device, seed=3)
    grad_out = torch.linspace(-1.0, 2.0, shape[0], device=device).to(dtype)
    grads = {}
    for name, dt in (("kernel", dtype), ("torch", dtype), ("fp64", torch.float64)):
        la, lb = a.detach().to(dt).requires_grad_(True), b.detach().to(dt).requires_grad_(True)
        fn = ops.cosine_similarity if name == "kernel" else ref.cosine_similarity
        fn(la, lb).backward(grad_out.to(dt))
        grads[name] = (la.grad, lb.grad)
    for i in range(2):
        assert_flash_close(f"cosine grad {'ab'[i]}", grads["kernel"][i], grads["fp64"][i], grads["torch"][i])


def test_gradcheck_float64():
    a, b = pair((3, 2, 3, 4), torch.float64, "cpu", seed=5)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(ops.cosine_similarity, (a, b), **GRADCHECK_F64)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_vectors_are_finite(device):
    """A zero sample has cosine 0 and a finite gradient (the clamped branch: ∂cos/∂a = b/ε, ∂cos/∂b = a/ε = 0)."""
    a, b = pair((3, 4, 8, 8), torch.float32, device, seed=8)
    a = a.clone()
    a[1] = 0
    a.requires_grad_(True)
    b.requires_grad_(True)
    cos = ops.cosine_similarity(a, b)
    assert cos[1].item() == 0.0 and torch.isfinite(cos).all()
    cos.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    torch.testing.assert_close(a.grad[1], b[1].detach() / 1e-12, rtol=1e-6, atol=0)
    assert (b.grad[1] == 0).all()
    both_zero = torch.zeros(2, 16, device=device)
    assert (ops.cosine_similarity(both_zero, both_zero) == 0).all()


def test_result_does_not_depend_on_thread_count():
    """Partial sums per fixed-size chunk, added in chunk order: bitwise the same on 1 or 2 threads."""
    a, b = pair((3, 4, 100, 100), torch.float32, "cpu", seed=9)  # 40000 per sample: three chunks
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.cosine_similarity(a, b)
        torch.set_num_threads(2)
        two = ops.cosine_similarity(a, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    a, b = pair((4, 6, 10), torch.float32, device, seed=10)
    at, bt = a.transpose(1, 2), b.transpose(1, 2)
    torch.testing.assert_close(ops.cosine_similarity(at, bt), ref.cosine_similarity(at, bt))


def test_opcheck():
    a, b = pair((3, 4, 5, 5), torch.float32, "cpu", seed=11)
    torch.library.opcheck(ops._cosine_op, (a.requires_grad_(True), b.requires_grad_(True)))
    _, stats = ops._cosine_op(a.detach(), b.detach())
    torch.library.opcheck(ops._cosine_backward_op, (torch.ones(3), a.detach(), b.detach(), stats))
