"""Loads the compiled kernels (``noisefast._C``, ``noisefast._C_cuda``) and says what is usable.

Importing this module never fails: a missing or broken extension is recorded, and
:func:`kernels_for` answers ``None`` for that device, which makes ``noisefast.ops`` fall back to the
pure-torch reference (``noisefast.ref``) with one :class:`ExtensionFallbackWarning`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

from noisefast.errors import BackendUnavailableError

# Storage dtype codes shared with csrc/common.h (enum class DType).
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


class ExtensionFallbackWarning(RuntimeWarning):
    """A fused kernel is unavailable; noisefast.ops runs the pure-torch reference instead."""


def _load(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(f"noisefast.{name}"), None
    except Exception as exc:  # ImportError, or an OSError from a broken shared library
        return None, f"{type(exc).__name__}: {exc}"


_C, _C_ERROR = _load("_C")
_C_CUDA, _C_CUDA_ERROR = _load("_C_cuda")
_WARNED: set[str] = set()


def _version(code: int) -> str:
    """12040 -> '12.4'."""
    return f"{code // 1000}.{code % 1000 // 10}" if code else ""


def _cuda_module_info() -> dict:
    return _C_CUDA.build_info() if _C_CUDA is not None else {}


@functools.lru_cache(maxsize=None)
def _cuda_unusable_reason(device_index: int) -> str | None:
    """Why ``_C_cuda`` cannot run on cuda:``device_index`` (None when it can)."""
    if _C_CUDA is None:
        return f"noisefast._C_cuda is not available ({_C_CUDA_ERROR})"
    info = _cuda_module_info()
    runtime, driver = info["cuda_runtime_version"], info["cuda_driver_version"]
    if driver // 1000 < runtime // 1000:
        return (f"the CUDA driver supports CUDA {_version(driver) or 'none'} but noisefast._C_cuda was built "
                f"with CUDA {_version(runtime)}")
    major, minor = torch.cuda.get_device_capability(device_index)
    if not arch_supported(info["cuda_archs"], 10 * major + minor):
        return f"noisefast._C_cuda was built for {info['cuda_archs']}, not for this GPU (sm_{major}{minor})"
    return None


def arch_supported(archs: str, cc: int) -> bool:
    """Whether a build for CMake CUDA architectures ``archs`` ("80-real 90") runs on compute capability ``cc`` (86).

    SASS for sm_XY runs on sm_XZ with Z ≥ Y; PTX (an entry without "-real") is JIT-compiled for any cc ≥ XY.
    """
    entries = [(int(a.split("-")[0]), a.endswith("-real")) for a in archs.split() if a.split("-")[0].isdigit()]
    return any((arch // 10 == cc // 10 and arch <= cc) or (not real and arch <= cc) for arch, real in entries)


def kernels_for(device: torch.device, *, strict: bool | None = None) -> ModuleType | None:
    """The extension module that runs kernels on ``device``, or None (the caller falls back to ref)."""
    if device.type == "cpu":
        reason = None if _C is not None else f"noisefast._C is not available ({_C_ERROR})"
        module = _C
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        reason = _cuda_unusable_reason(index)
        module = _C_CUDA
    else:
        reason, module = f"no fused kernels for device type {device.type!r}", None
    if reason is None:
        return module
    if strict_mode() if strict is None else strict:
        raise BackendUnavailableError(
            f"noisefast.ops: {reason}, and strict mode (NOISEFAST_STRICT=1 or Engine(strict=True)) forbids the slower pure-torch fallback"
        )
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(
            f"noisefast.ops: {reason}; using the pure-torch reference (noisefast.ref) instead, which is "
            "slower. Rebuild with `pip install --no-build-isolation -e .` to get the fused kernels.",
            ExtensionFallbackWarning,
            stacklevel=_outside_package_stacklevel(),
        )
    return None


def strict_mode() -> bool:
    """``NOISEFAST_STRICT=1``: a missing or unusable kernel module is an error, not a warning and a fallback
    (a service must not run 3–5× slower without knowing)."""
    return os.environ.get("NOISEFAST_STRICT", "") not in ("", "0")


def require_kernels(device: torch.device) -> None:
    """Raise `BackendUnavailableError` unless the fused kernels run on ``device`` (the Engine's ``strict=True``)."""
    kernels_for(device, strict=True)


def _outside_package_stacklevel() -> int:
    """The warnings.warn stacklevel (as seen from kernels_for()) of the first caller outside noisefast."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(2), 2  # 1 = kernels_for(), which calls warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package_dir + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def cpu_isa_levels() -> list[str]:
    """The CPU instruction-set levels the kernels can run with on this machine, lowest first.

    ``["baseline", "avx2", "avx512"]`` or a prefix of it on x86-64 (``["baseline"]`` elsewhere, and
    ``[]`` without ``noisefast._C``).
    """
    return list(_C.cpu_isa_available()) if _C is not None else []


@contextlib.contextmanager
def cpu_isa(level: str) -> Iterator[str]:
    """Runs the CPU kernels with instruction-set ``level`` (baseline, avx2, avx512) inside the block.

    The switch is process-wide (every thread), like ``NOISEFAST_CPU_ISA`` at load time; the previous
    level comes back on exit. ``ValueError`` for an unknown level or one this CPU lacks.
    """
    if _C is None:
        raise RuntimeError(f"noisefast._C is not available ({_C_ERROR})")
    previous = _C.set_cpu_isa(level)
    try:
        yield level
    finally:
        _C.set_cpu_isa(previous)


def build_info() -> dict:
    """What was built, with which toolchain, and what can run now.

    Keys: ``version``, ``torch``; ``cpu_extension`` (bool), ``cpu_error``, ``openmp`` (the
    ``_OPENMP`` date, 0 without), ``compiler``; ``cpu_isa`` (the instruction-set level the CPU
    kernels run with now: baseline, avx2 or avx512; NOISEFAST_CPU_ISA caps it), ``cpu_isa_available``
    (the levels this CPU runs), ``cpu_isa_compiled`` (the levels in the build); ``cuda_mode`` (NOISEFAST_CUDA at build time),
    ``cuda_compiler`` (the nvcc used, "" if none), ``cuda_extension`` (bool), ``cuda_error``,
    ``cuda_archs``, ``cuda_version`` (runtime the kernels were built with), ``cuda_driver``,
    ``cuda_devices``; ``torch_cuda`` (torch.cuda.is_available()), ``cuda_usable`` (fused CUDA
    kernels run on the current GPU) and ``cuda_unusable_reason``.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("noisefast")
    except PackageNotFoundError:
        pkg_version = "unknown (not installed)"
    cpu = _C.build_info() if _C is not None else {}
    cuda = _cuda_module_info()
    torch_cuda = torch.cuda.is_available()
    reason = _cuda_unusable_reason(torch.cuda.current_device()) if torch_cuda else "torch sees no CUDA device"
    return {
        "version": pkg_version,
        "torch": torch.__version__,
        "cpu_extension": _C is not None,
        "cpu_error": _C_ERROR,
        "openmp": cpu.get("openmp", 0),
        "compiler": cpu.get("compiler", ""),
        "cpu_isa": cpu.get("cpu_isa", ""),
        "cpu_isa_available": cpu.get("cpu_isa_available", []),
        "cpu_isa_compiled": cpu.get("cpu_isa_compiled", []),
        "cuda_mode": cpu.get("cuda_mode", ""),
        "cuda_compiler": cpu.get("cuda_compiler", ""),
        "cuda_extension": _C_CUDA is not None,
        "cuda_error": _C_CUDA_ERROR,
        "cuda_archs": cuda.get("cuda_archs", "").split(),
        "cuda_version": _version(cuda.get("cuda_runtime_version", 0)),
        "cuda_driver": _version(cuda.get("cuda_driver_version", 0)),
        "cuda_devices": cuda.get("device_count", 0),
        "torch_cuda": torch_cuda,
        "cuda_usable": torch_cuda and reason is None,
        "cuda_unusable_reason": reason,
    }
