"""TensorRT engine build and cache for the ``tensorrt`` backend (the runtime is `noisefast.denoisers.trt`).

* **Build** (slow, memory-hungry): one optimisation profile per batch range (min, opt, max), strongly
  typed (precision comes from the ONNX), a timing cache file shared by all builds for this TensorRT
  version and GPU, progress logged through `logging` (logger ``noisefast.denoisers.trt``), a clear refusal
  when the GPU lacks the memory.
* **Cache**: engines live in ``cache_dir`` (default ``~/.cache/noisefast/tensorrt``) under a key that
  hashes the ONNX content, the profile shapes, the TensorRT version, the GPU name and compute
  capability, and the builder options; written to a temporary file and renamed, never half-written.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from noisefast.atomic import atomic_write_bytes
from noisefast.denoisers.onnx_io import TensorSpec, onnx_files
from noisefast.errors import BackendUnavailableError

log = logging.getLogger("noisefast.denoisers.trt")
GiB = 1 << 30


class InsufficientGpuMemoryError(RuntimeError):
    """The GPU has too little free memory to build or load an engine."""


def require_tensorrt():
    """Import ``tensorrt`` (>= 10) and check for a CUDA GPU; `BackendUnavailableError` with the fix otherwise."""

    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError(
            "the tensorrt backend needs NVIDIA TensorRT >= 10 for Python: pip install 'noisefast[tensorrt]' "
            "(and a CUDA GPU with a recent driver)"
        ) from e
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailableError(
            f"the tensorrt backend needs TensorRT >= 10, found {trt.__version__}: pip install -U 'tensorrt>=10'"
        )
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"the tensorrt backend needs a CUDA GPU, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})"
        )
    return trt


def profile_shapes(
    inputs: dict[str, TensorSpec],
    batch: tuple[int, int, int],
    latent_size: tuple[int, int] | None = None,
    seq_len: int | None = None,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape of every input for one batch range.

    A dynamic latent height/width is fixed to ``latent_size``, a dynamic prompt length to ``seq_len``.
    """
    lo, opt, hi = batch
    if not all(isinstance(b, int) for b in batch) or not 1 <= lo <= opt <= hi:
        raise ValueError(f"a batch profile must be integers 1 <= min <= opt <= max, got {batch}")
    shapes = {}
    for name, spec in inputs.items():
        per = ([], [], [])
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                sizes = (d, d, d)
            elif axis == 0:
                sizes = (lo, opt, hi)
            elif name == "sample" and axis in (2, 3):
                if latent_size is None:
                    raise ValueError("the ONNX model has dynamic height/width: pass latent_size=(h, w)")
                sizes = (latent_size[axis - 2],) * 3
            elif name == "encoder_hidden_states" and axis == 1:
                if seq_len is None:
                    raise ValueError("the ONNX model has a dynamic prompt length: pass seq_len")
                sizes = (seq_len,) * 3
            else:
                raise ValueError(f"no size for dynamic axis {axis} ({d!r}) of input {name!r} {spec.shape}")
            for acc, s in zip(per, sizes):
                acc.append(s)
        shapes[name] = tuple(tuple(p) for p in per)
    return shapes


def engine_cache_key(**parts) -> str:
    """SHA-256 over the JSON of everything that makes one engine differ from another."""
    import hashlib

    return hashlib.sha256(json.dumps({"format": 1, **parts}, sort_keys=True, default=str).encode()).hexdigest()


def check_free_memory(needed: int, free: int, total: int, what: str, gpu: str) -> None:
    """Refuse with the numbers instead of letting TensorRT fail deep inside a build."""
    if free < needed:
        raise InsufficientGpuMemoryError(
            f"{what} needs about {needed / GiB:.1f} GiB of free GPU memory, but {gpu} has {free / GiB:.1f} GiB "
            f"free of {total / GiB:.1f} GiB. Free memory (other models or processes on this GPU), build with a "
            f"smaller workspace_bytes or batch profile, or use a GPU with more memory."
        )


def _trt_logger(trt):
    """A TensorRT logger that forwards to `logging` (errors as errors, build chatter as debug)."""

    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.CRITICAL, sev.ERROR: logging.ERROR, sev.WARNING: logging.WARNING,
              sev.INFO: logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if severity in levels:  # VERBOSE (tens of thousands of lines per build) is dropped
                log.log(levels[severity], "TensorRT: %s", msg)

    return _Logger()


def _progress_monitor(trt):
    """Logs each top-level build phase and its steps (nested phases at debug level)."""

    class _Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps, self.parents, self.t0 = {}, {}, time.perf_counter()

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name], self.parents[phase_name] = num_steps, parent_phase
            level = logging.INFO if parent_phase is None else logging.DEBUG
            log.log(level, "engine build: %s (%d steps) [%.0f s]", phase_name, num_steps, time.perf_counter() - self.t0)

        def step_complete(self, phase_name, step):
            level = logging.INFO if self.parents.get(phase_name) is None else logging.DEBUG
            log.log(level, "engine build: %s %d/%d", phase_name, step + 1, self.steps.get(phase_name, 0))
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            log.debug("engine build: %s done [%.0f s]", phase_name, time.perf_counter() - self.t0)

    return _Progress()


def build_engine(onnx_path, profiles, *, timing_cache: Path, workspace_bytes=None, optimization_level=None):
    """Build a serialized engine (``IHostMemory``) from ``onnx_path`` with one profile per ``profiles`` entry."""
    trt = require_tensorrt()
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    log.info("engine build: parsing %s", onnx_path)
    if not parser.parse_from_file(str(onnx_path)):  # by path, so external weight files are found
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("engine build: timing cache %s does not fit this TensorRT/GPU; starting afresh", timing_cache)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    monitor = _progress_monitor(trt) if hasattr(trt, "IProgressMonitor") else None  # must outlive the build
    if monitor is not None:
        config.progress_monitor = monitor
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT errors logged)")
    log.info("engine build: done in %.0f s (%.2f GiB)", time.perf_counter() - t0, plan.nbytes / GiB)
    atomic_write_bytes(timing_cache, config.get_timing_cache().serialize())
    return plan


def cached_or_built_plan(trt, onnx_path, shapes, *, engine_path: Path, key_parts: dict, device: torch.device,
                         gpu: str, build_options: dict):  # fmt: skip
    """The serialized engine: read from the cache at ``engine_path``, or built and then cached (atomically)."""
    free, total = torch.cuda.mem_get_info(device)
    if engine_path.is_file():
        log.info("loading cached TensorRT engine %s", engine_path)
        check_free_memory(engine_path.stat().st_size, free, total, "loading the engine", gpu)
        return engine_path.read_bytes()
    # The builder holds the parsed weights and the engine under construction, plus its scratch.
    weights = sum(f.stat().st_size for f in onnx_files(onnx_path))
    scratch = build_options["workspace_bytes"] or GiB
    check_free_memory(2 * weights + scratch, free, total, "building the engine", gpu)
    log.info("building TensorRT engine for %s, profiles %s -> %s", onnx_path, shapes, engine_path)
    sm = "".join(map(str, key_parts["compute_capability"]))
    timing_cache = engine_path.parent / f"timing-{trt.__version__}-sm{sm}.cache"
    plan = build_engine(onnx_path, shapes, timing_cache=timing_cache, **build_options)
    atomic_write_bytes(engine_path, plan)
    atomic_write_bytes(engine_path.with_suffix(".json"), json.dumps(key_parts, indent=1, default=str).encode())
    return plan
