"""The ``onnxruntime`` backend: an exported UNet run by ONNX Runtime, behind the `Denoiser` interface.

CUDAExecutionProvider when onnxruntime-gpu and a CUDA device are present, else CPU. Either way the
call goes through IO binding on torch tensors' memory (``data_ptr``): inputs are cast to the graph's
dtypes by torch on the runtime's device (no copy when they already are), the output is written straight
into a torch tensor, and no numpy or host round trip happens.

CPU threads (`session_threads`): ``num_threads`` or every core this process may use, with the pool's
spin-waiting off. ONNX Runtime's workers spin between parallel sections by default; on a machine whose cores
are shared (a server, a screening worker, other jobs) the spinning threads steal the cores the work needs —
measured on the built-in model, 2 threads: spinning 2× slower per call than not with one competing
CPU-bound process (bench/results/ort-threads-*.md). Forward only: gradients go through ``autograd`` (the
torch UNet the export was made from, when given: see `noisefast.transform`), else inputs that require grad
are refused.
"""

from __future__ import annotations

import numpy as np
import torch

from noisefast.denoisers.cache import available_cores
from noisefast.denoisers.onnx_io import ExportedUNetDenoiser
from noisefast.errors import BackendUnavailableError

_NP_DTYPES = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.float64: np.float64,
    torch.int64: np.int64,
    torch.int32: np.int32,
}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:

        raise BackendUnavailableError(
            "the onnxruntime backend needs the onnxruntime package: pip install 'noisefast[onnx]' "
            "(or onnxruntime-gpu for the CUDA execution provider)"
        ) from e
    return onnxruntime


def session_threads(num_threads: int | None) -> tuple[int, bool]:
    """``(intra-op threads, allow spinning)``: ``num_threads`` or all cores this process may use; never spinning
    (see the module docstring: spin-waiting workers halve the throughput when another process wants the cores)."""
    threads = int(num_threads) if num_threads else available_cores()
    return max(1, threads), False


class OnnxRuntimeDenoiser(ExportedUNetDenoiser):
    """``model_out = den(x, t, cond)`` through an ONNX Runtime session over an exported UNet.

    ``path``: an export folder or ``.onnx`` file. ``providers``: ONNX Runtime provider list (default:
    CUDA when available to both onnxruntime and torch, then CPU). ``device_id``: the CUDA device.
    ``num_threads``: CPU intra-op threads (default: every core this process may use, `session_threads`).
    ``session_options`` overrides all of that when given. ``autograd``: the torch denoiser of the same UNet,
    which gradients go through (compiled forward + torch backward).
    """

    backend = "onnxruntime"

    def __init__(self, path, *, providers=None, device_id: int = 0, num_threads: int | None = None,
                 session_options=None, autograd=None):
        ort = _import_onnxruntime()
        super().__init__(path, autograd=autograd)
        if providers is None:
            cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        providers = [("CUDAExecutionProvider", {"device_id": device_id}) if p == "CUDAExecutionProvider" else p
                     for p in providers]
        if session_options is None:
            session_options = ort.SessionOptions()
            threads, spinning = session_threads(num_threads)
            session_options.intra_op_num_threads = threads
            session_options.inter_op_num_threads = 1
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.threads = session_options.intra_op_num_threads
        self.session = ort.InferenceSession(str(self.path), sess_options=session_options, providers=providers)
        on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.device = torch.device("cuda", device_id) if on_cuda else torch.device("cpu")
        self._ort_device = ("cuda", device_id) if on_cuda else ("cpu", 0)

    def __repr__(self) -> str:
        return f"OnnxRuntimeDenoiser({str(self.path)!r}, device={self.device}, dtype={self.dtype})"

    def _run(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        b, _, h, w = feed["sample"].shape
        c_out = self.output.shape[1] if isinstance(self.output.shape[1], int) else feed["sample"].shape[1]
        out = torch.empty((b, c_out, h, w), dtype=self.output.dtype, device=self.device)

        binding = self.session.io_binding()
        kind, index = self._ort_device
        for name, v in feed.items():
            binding.bind_input(name, kind, index, _NP_DTYPES[v.dtype], tuple(v.shape), v.data_ptr())
        binding.bind_output(self.output.name, kind, index, _NP_DTYPES[out.dtype], tuple(out.shape), out.data_ptr())
        if self.device.type == "cuda":
            # ORT runs on its own stream: the inputs torch queued must be complete first. ORT
            # synchronises its stream before run_with_iobinding returns, so `out` is ready after it.
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out
