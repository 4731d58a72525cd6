"""Shared pieces of the kernel tests (tests/test_ops_*.py): devices, shapes, data, tolerances."""

from __future__ import annotations

import pytest
import torch
from _tolerance import assert_close_to_reference, eps

from noisefast import _ext

HAS_CUDA = torch.cuda.is_available()

# CUDA cases are collected everywhere, skipped without a GPU, and run the same checks on one.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
]

# fp64 has no CUDA kernel (ops routes it to ref.py), so it is tested on CPU only.
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# [B, ...] cases: batch 1 with N = 105 (odd: CUDA vector body + scalar tail), batch 7 with N = 396
# (not a multiple of 8: scalar CUDA path), N = 1024 (16-byte vectors everywhere) and N = 20100
# (several CPU and CUDA chunks per row, not a multiple of 8).
SHAPES = [(1, 3, 5, 7), (7, 4, 9, 11), (2, 4, 16, 16), (2, 4, 75, 67)]

# Absolute slack on top of the "2× torch's own error" bound, relative to the output's magnitude:
# one unit in the last place of the storage dtype (fp64: a few hundred, since torch-in-fp64 is the
# oracle itself and has zero error by definition).
ATOL = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float64: 1e-13}


def over_devices_dtypes_shapes(test):
    """Parametrises ``test(device, dtype, shape, ...)`` over DEVICES × DTYPES × SHAPES."""
    test = pytest.mark.parametrize("shape", SHAPES, ids=str)(test)
    test = pytest.mark.parametrize("dtype", DTYPES, ids=str)(test)
    return pytest.mark.parametrize("device", DEVICES)(test)


def skip_unsupported(device: str, dtype: torch.dtype) -> None:
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 has no CUDA kernel (ops runs ref.py for it)")


def randn(shape, dtype, device, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Reproducible data, the same values on every device (drawn in fp32 on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g)).to(device=device, dtype=dtype)


def rand_per_sample(B: int, lo: float, hi: float, seed: int, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(B, generator=g, dtype=torch.float64)).to(device)


def to64(value):
    """Tensors → float64 (same device); everything else unchanged."""
    return value.double() if isinstance(value, torch.Tensor) else value


def assert_flash_close(name: str, out: torch.Tensor, want64: torch.Tensor, torch_same: torch.Tensor) -> None:
    """The flash rule (`_tolerance.assert_close_to_reference`): |kernel − fp64| ≤ 2·|torch in the same dtype − fp64|
    + ATOL[dtype]·scale (1 ulp; float64: 1e-13, the reassociation of a few hundred roundings)."""
    assert out.dtype == torch_same.dtype, (name, out.dtype, torch_same.dtype)
    assert_close_to_reference(out, torch_same, want64, ulps=ATOL[out.dtype] / eps(out.dtype), name=name)


def extension_built() -> bool:
    return _ext._C is not None


requires_extension = pytest.mark.skipif(not extension_built(), reason="noisefast._C is not built (test_build fails)")
