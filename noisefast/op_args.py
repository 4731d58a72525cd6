"""Argument checks of the fused ops (`noisefast.ops`): tensors and per-sample coefficients.

Bad input raises ``TypeError`` (types, dtypes) or ``ValueError`` (shapes, devices, values) naming the op and
the argument. A coefficient is a Python number or a ``[B]`` tensor; it comes back as a contiguous ``[B]`` tensor
in the accumulation dtype on x's device (values checked: a device sync on CUDA).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from noisefast import _ext

DTYPES = tuple(_ext.DTYPE_CODES)


def check_tensors(op: str, min_ndim: int, **tensors: Tensor | None) -> Tensor:
    """All given tensors: floating storage, the same shape/dtype/device, ndim ≥ min_ndim. Returns the first."""
    named = [(n, t) for n, t in tensors.items() if t is not None]
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported: float32, float16, bfloat16, float64")
    first_name, first = named[0]
    if first.ndim < min_ndim:
        raise ValueError(f"{op}: {first_name} must have at least {min_ndim} dims [B, ...], got shape {tuple(first.shape)}")
    for name, t in named[1:]:
        if t.shape != first.shape:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)} but {first_name} has {tuple(first.shape)}")
        if t.dtype != first.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {first_name} has {first.dtype}")
        if t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}")
    return first


def check_no_overlap(op: str, written: tuple[str, ...], **tensors: Tensor) -> None:
    """In-place outputs need memory of their own: refuse, before anything is written, a written tensor whose elements
    share memory (an ``expand``-ed or other overlapping view) and a written tensor sharing an element with any other
    (views of one buffer that interleave without sharing elements are fine)."""
    if all(t.is_contiguous() for t in tensors.values()):  # the common case, ~1 µs: dense tensors in disjoint ranges
        spans = sorted((p, p + t.nbytes) for t in tensors.values() if (p := t.data_ptr()) and t.nbytes)
        if all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])):
            return
    for name in written:
        t = tensors[name]
        if _self_overlapping(t):
            raise ValueError(f"{op}: {name} is updated in place but its elements share memory (an expanded or "
                             f"overlapping view: shape {tuple(t.shape)}, strides {t.stride()}); pass a tensor with "
                             f"memory of its own (.clone())")  # fmt: skip
    items = [(n, t) for n, t in tensors.items() if t.numel()]
    for i, (na, a) in enumerate(items):
        for nb, b in items[i + 1 :]:
            if (na in written or nb in written) and _share_elements(a, b):
                raise ValueError(f"{op}: {na} and {nb} share memory (overlapping views of one tensor), and "
                                 f"{na if na in written else nb} is updated in place; pass separate tensors")  # fmt: skip


def _offsets(t: Tensor) -> Tensor:  # [numel] int64: each element's position in its storage
    off = torch.full((), t.storage_offset(), dtype=torch.int64, device=t.device)
    for dim, (size, stride) in enumerate(zip(t.shape, t.stride())):
        shape = [1] * t.ndim
        shape[dim] = size
        off = off + (torch.arange(size, device=t.device) * stride).reshape(shape)
    return off.reshape(-1)


def _self_overlapping(t: Tensor) -> bool:
    """Whether two elements of ``t`` share an address. Fast path: each dimension's stride clears the extent of the
    faster ones (then no overlap); otherwise the element offsets are compared (rare layouts only)."""
    extent = 1  # elements spanned by the dimensions taken so far: 1 + Σ (size − 1)·stride
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz > 1):
        if stride == 0:
            return True
        if stride < extent:
            return bool(torch.unique(_offsets(t)).numel() < t.numel())
        extent += (size - 1) * stride
    return False


def _share_elements(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` (same dtype) have an element at the same address."""
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr() or a.element_size() != b.element_size():
        return False

    def span(t):
        return t.storage_offset(), t.storage_offset() + 1 + sum((sz - 1) * st for sz, st in zip(t.shape, t.stride()))

    (a0, a1), (b0, b1) = span(a), span(b)
    if a1 <= b0 or b1 <= a0:
        return False
    if a.is_contiguous() and b.is_contiguous():
        return True  # dense spans that intersect share elements
    return bool(torch.isin(_offsets(a), _offsets(b)).any())


class Range:
    """A condition on coefficient values, for Python numbers and tensors alike (NaN always fails).

    ``why`` (optional) is appended to the error message: the reason for the bound.
    """

    def __init__(self, text: str, lo: float, hi: float, lo_open: bool, why: str = ""):
        self.text, self.lo, self.hi, self.lo_open, self.why = text, lo, hi, lo_open, why

    def scalar_ok(self, v: float) -> bool:
        return (v > self.lo if self.lo_open else v >= self.lo) and v <= self.hi and math.isfinite(v)

    def tensor_ok(self, t: Tensor) -> Tensor:
        return ((t > self.lo) if self.lo_open else (t >= self.lo)) & (t <= self.hi) & t.isfinite()


UNIT = Range("in [0, 1]", 0.0, 1.0, lo_open=False)  # ᾱ = 0: the zero-terminal-SNR end of the schedule
# epsilon prediction without clipping: x̂₀ = (x − √(1−a)·m)/√a is a division by √a, so a = ᾱ_from must be > 0
# (diffusers returns ±inf there). With clipping the clamp bounds x̂₀ to ±r and the move stays defined.
UNIT_EPS_FROM = Range("in (0, 1]", 0.0, 1.0, lo_open=True,
                      why="epsilon prediction without clipping divides by √ᾱ_from: x̂₀ = (x − √(1−ᾱ)·m)/√ᾱ")
FINITE = Range("finite", -math.inf, math.inf, lo_open=False)
POSITIVE = Range("finite and > 0", 0.0, math.inf, lo_open=True)


def _why(allowed: Range) -> str:
    return f" ({allowed.why})" if allowed.why else ""


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def coef(op: str, name: str, value, x: Tensor, allowed: Range) -> Tensor:
    """A float or [B] tensor → contiguous [B] in the accumulation dtype on x's device (detached)."""
    B = x.shape[0]
    acc = acc_dtype(x.dtype)
    if isinstance(value, Tensor):
        if value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{op}: {name} must be real, got dtype {value.dtype}")
        if not (value.ndim == 0 or value.shape == (B,)):
            raise ValueError(f"{op}: {name} must be a float or a [B] tensor with B = {B}, got shape {tuple(value.shape)}")
        t = value.detach().to(device=x.device, dtype=acc)
        bad = ~allowed.tensor_ok(t)
        if bool(bad.any()):
            raise ValueError(f"{op}: {name} must be {allowed.text}; got {t[bad].flatten()[:4].tolist()}{_why(allowed)}")
        return t.expand(B).contiguous()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not allowed.scalar_ok(float(value)):
            raise ValueError(f"{op}: {name} must be {allowed.text}; got {value!r}{_why(allowed)}")
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            return _cpu_constant(float(value), B, acc)
        return torch.full((B,), float(value), dtype=acc, device=x.device)
    raise TypeError(f"{op}: {name} must be a float or a [B] tensor, got {type(value).__name__}")


@functools.lru_cache(maxsize=1024)
def _cpu_constant(value: float, B: int, dtype: torch.dtype) -> Tensor:
    """A [B] CPU tensor filled with value, made once: schedules repeat the same few alphas every step.

    The kernels only read coefficient arrays, so sharing them is safe (CPU only: a CUDA copy made on
    one stream could be read on another before it is filled). Made outside inference mode, so that a
    tensor cached during inference can still be saved for a later backward.
    """
    with torch.inference_mode(False):
        return torch.full((B,), value, dtype=dtype)
