"""The ``tensorrt`` backend's runtime: a TensorRT engine of the exported UNet, run on torch CUDA tensors.

Written against the TensorRT Python API 10.x and 11.x (the ``tensorrt`` package on PyPI). Building and
caching the engine is `noisefast.denoisers.trt_build`. Precision comes from the ONNX (strongly typed):
export with ``dtype=torch.float16`` for speed.

* **Run**: ``set_input_shape`` / ``set_tensor_address`` on torch tensors and ``execute_async_v3`` on
  torch's current stream: no host copies, no synchronisation. ``cuda_graph=True`` captures the
  enqueue in a CUDA graph for the current input shapes (re-captured when they change), which pays
  when the call shape is fixed. Forward only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from noisefast.denoisers.cache import cache_dir as cache_root
from noisefast.denoisers.onnx_io import ExportedUNetDenoiser, onnx_content_hash, read_export_meta
from noisefast.denoisers.trt_build import (  # noqa: F401  (re-exported: the backend's public names)
    GiB,
    InsufficientGpuMemoryError,
    _trt_logger,
    cached_or_built_plan,
    check_free_memory,
    engine_cache_key,
    profile_shapes,
    require_tensorrt,
)


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dt not in table:
        raise TypeError(f"unsupported TensorRT tensor dtype {dt}")
    return table[dt]


class TensorRTDenoiser(ExportedUNetDenoiser):
    """``model_out = den(x, t, cond)`` through a cached TensorRT engine of an exported UNet.

    ``profiles``: batch ranges ``(min, opt, max)``, one optimisation profile each (count the CFG
    doubling: guided denoising calls the UNet with 2x the noise batch). ``latent_size=(h, w)`` is
    required when the export has dynamic height/width; ``seq_len`` (the prompt length) defaults to the
    one the export traced. ``workspace_bytes`` caps the builder's
    scratch memory (default: TensorRT's, the whole GPU). ``cuda_graph`` replays a captured graph
    while the input shapes stay the same. ``autograd``: the torch denoiser gradients go through (see
    `noisefast.denoisers.onnx_io.ExportedUNetDenoiser`).
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
        autograd=None,
    ):
        trt = require_tensorrt()
        super().__init__(path, autograd=autograd)
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
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "tensorrt"
        self.engine_path = self.cache_dir / f"unet-{engine_cache_key(**self.key_parts)[:24]}.engine"

        with torch.cuda.device(self.device):
            plan = cached_or_built_plan(trt, self.path, shapes, engine_path=self.engine_path, key_parts=self.key_parts,
                                        device=self.device, gpu=self.gpu, build_options=self._build_options)  # fmt: skip
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
