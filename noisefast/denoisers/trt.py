"""The ``tensorrt`` backend: a TensorRT engine built from the exported UNet, run on torch CUDA tensors.

Written against the TensorRT Python API 10.x and 11.x (the ``tensorrt`` package on PyPI):

* **Precision comes from the ONNX.** The network is built *strongly typed* (the only mode TensorRT 11
  has; opt-in on 10.x), so an fp16 export gives an fp16 engine and an fp32 export an fp32 one
  (TF32 where the GPU has it). Export with ``dtype=torch.float16`` for speed.
* **Build** (slow, memory-hungry): one optimisation profile per batch range (min, opt, max), a timing
  cache file shared by all builds for this TensorRT version and GPU, progress logged through
  `logging` (logger ``noisefast.denoisers.trt``), a clear refusal when the GPU lacks the memory.
* **Cache**: engines live in ``cache_dir`` (default ``~/.cache/noisefast/tensorrt``) under a key that
  hashes the ONNX content, the profile shapes, the TensorRT version, the GPU name and compute
  capability, and the builder options; written to a temporary file and renamed, never half-written.
* **Run**: ``set_input_shape`` / ``set_tensor_address`` on torch tensors and ``execute_async_v3`` on
  torch's current stream: no host copies, no synchronisation. ``cuda_graph=True`` captures the
  enqueue in a CUDA graph for the current input shapes (re-captured when they change), which pays
  when the call shape is fixed. Forward only.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from noisefast.atomic import atomic_write_bytes
from noisefast.denoisers.artifacts import default_cache_dir
from noisefast.denoisers.onnx_io import (
    ExportedUNetDenoiser,
    TensorSpec,
    onnx_content_hash,
    onnx_files,
    read_export_meta,
)
from noisefast.errors import BackendUnavailableError

log = logging.getLogger(__name__)
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


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dt not in table:
        raise TypeError(f"unsupported TensorRT tensor dtype {dt}")
    return table[dt]


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


class TensorRTDenoiser(ExportedUNetDenoiser):
    """``model_out = den(x, t, cond)`` through a cached TensorRT engine of an exported UNet.

    ``profiles``: batch ranges ``(min, opt, max)``, one optimisation profile each (count the CFG
    doubling: guided denoising calls the UNet with 2x the noise batch). ``latent_size=(h, w)`` is
    required when the export has dynamic height/width; ``seq_len`` (the prompt length) defaults to the
    one the export traced. ``workspace_bytes`` caps the builder's
    scratch memory (default: TensorRT's, the whole GPU). ``cuda_graph`` replays a captured graph
    while the input shapes stay the same.
    """

    backend = "tensorrt"

    def __init__(
        self,
        path,
        *,
        profiles=((1, 2, 8),),
        latent_size: tuple[int, int] | None = None,
        seq_len: int | None = None,
        cache_dir=None,
        workspace_bytes: int | None = None,
        optimization_level: int | None = None,
        cuda_graph: bool = False,
        device=None,
    ):
        trt = require_tensorrt()
        super().__init__(path)
        index = torch.cuda.current_device() if device is None else (torch.device(device).index or 0)
        self.device = torch.device("cuda", index)
        self.batch_ranges = [tuple(p) for p in profiles]
        if not self.batch_ranges:
            raise ValueError("profiles must name at least one (min, opt, max) batch range")
        self.cuda_graph = cuda_graph
        self.gpu = torch.cuda.get_device_name(self.device)
        self._build_options = dict(workspace_bytes=workspace_bytes, optimization_level=optimization_level)
        if seq_len is None:  # a dynamic prompt length defaults to the one the export traced
            seq_len = ((read_export_meta(self.path) or {}).get("example_shapes") or {}).get(
                "encoder_hidden_states", [None, None])[1]
        shapes = [profile_shapes(self.inputs, b, latent_size, seq_len) for b in self.batch_ranges]
        self.key_parts = dict(
            onnx_sha256=onnx_content_hash(self.path), profiles=shapes, tensorrt=trt.__version__, gpu=self.gpu,
            compute_capability=torch.cuda.get_device_capability(self.device), strongly_typed=True,
            **self._build_options,
        )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tensorrt"
        self.engine_path = self.cache_dir / f"unet-{engine_cache_key(**self.key_parts)[:24]}.engine"

        with torch.cuda.device(self.device):
            plan = self._cached_or_built_plan(trt, shapes)
            # Engine and execution context.
            self._runtime = trt.Runtime(_trt_logger(trt))
            self.engine = self._runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {self.engine_path}; delete it to rebuild")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                free, _ = torch.cuda.mem_get_info(self.device)
                raise InsufficientGpuMemoryError(
                    f"TensorRT could not create an execution context (activation memory) for {self.engine_path} "
                    f"on {self.gpu} with {free / GiB:.1f} GiB free"
                )
        self._out_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output.name))
        self._profile = 0
        self._graph = None  # (shape key, CUDAGraph, static inputs, static output)

    def _cached_or_built_plan(self, trt, shapes):
        """The serialized engine: read from the cache, or built and then cached (atomically)."""
        free, total = torch.cuda.mem_get_info(self.device)
        if self.engine_path.is_file():
            log.info("loading cached TensorRT engine %s", self.engine_path)
            check_free_memory(self.engine_path.stat().st_size, free, total, "loading the engine", self.gpu)
            return self.engine_path.read_bytes()
        # The builder holds the parsed weights and the engine under construction, plus its scratch.
        weights = sum(f.stat().st_size for f in onnx_files(self.path))
        scratch = self._build_options["workspace_bytes"] or GiB
        check_free_memory(2 * weights + scratch, free, total, "building the engine", self.gpu)
        log.info("building TensorRT engine for %s, batch profiles %s -> %s", self.path, self.batch_ranges,
                 self.engine_path)
        sm = "".join(map(str, self.key_parts["compute_capability"]))
        timing_cache = self.cache_dir / f"timing-{trt.__version__}-sm{sm}.cache"
        plan = build_engine(self.path, shapes, timing_cache=timing_cache, **self._build_options)
        atomic_write_bytes(self.engine_path, plan)
        sidecar = json.dumps(self.key_parts, indent=1, default=str).encode()
        atomic_write_bytes(self.engine_path.with_suffix(".json"), sidecar)
        return plan

    def __repr__(self) -> str:
        return f"TensorRTDenoiser({str(self.path)!r}, engine={str(self.engine_path)!r}, dtype={self.dtype})"

    def _profile_for(self, batch: int) -> int:
        for i, (lo, _, hi) in enumerate(self.batch_ranges):
            if lo <= batch <= hi:
                return i
        raise ValueError(f"batch {batch} is outside every engine profile {self.batch_ranges}; rebuild with a wider one")

    def _bind(self, feed: dict[str, torch.Tensor], profile: int, stream: int) -> torch.Tensor:
        if profile != self._profile:
            self.context.set_optimization_profile_async(profile, stream)
            self._profile = profile
        for name, v in feed.items():
            self.context.set_input_shape(name, tuple(v.shape))
            self.context.set_tensor_address(name, v.data_ptr())
        shape = tuple(self.context.get_tensor_shape(self.output.name))
        out = torch.empty(shape, dtype=self._out_dtype, device=self.device)
        self.context.set_tensor_address(self.output.name, out.data_ptr())
        return out

    def _enqueue(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT execution failed for {self.engine_path} (see the TensorRT errors logged)")

    def _run_graph(self, feed, profile: int, stream) -> torch.Tensor:
        key = (profile, *(tuple(v.shape) for v in feed.values()))
        if self._graph is not None and self._graph[0] == key:
            _, graph, static, out = self._graph
            for name, v in feed.items():
                static[name].copy_(v)
            graph.replay()
            return out.clone()
        # New shapes: bind static buffers, run once outside capture (TensorRT finishes its
        # shape-dependent setup there), then capture the enqueue on torch's capture stream.
        static = {name: v.clone() for name, v in feed.items()}
        out = self._bind(static, profile, stream.cuda_stream)
        self._enqueue(stream.cuda_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._enqueue(torch.cuda.current_stream(self.device).cuda_stream)
        self._graph = (key, graph, static, out)
        return out.clone()

    def _run(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        profile = self._profile_for(feed["sample"].shape[0])
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            if self.cuda_graph:
                return self._run_graph(feed, profile, stream)
            out = self._bind(feed, profile, stream.cuda_stream)
            self._enqueue(stream.cuda_stream)
        return out
