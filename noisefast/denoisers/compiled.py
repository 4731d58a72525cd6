"""The ``compile`` backend: `UNetDenoiser` over a ``torch.compile``-d UNet.

Defaults: ``dynamic=False`` (one specialised graph per input shape; the shapes of a scoring or
selection run are fixed) and, on CUDA, ``mode="reduce-overhead"`` (inductor with CUDA graphs, which
removes the launch overhead of the UNet's hundreds of kernels). On CPU the default inductor mode:
``max-autotune`` benchmarks kernel variants at compile time and costs minutes there for little.

Unlike the ONNX backends this one keeps autograd: noise optimization can run through it.
The first call for each shape compiles (seconds to minutes); later calls reuse the graph.
"""

from __future__ import annotations

import torch

from noisefast.denoisers.base import Condition


class CompiledDenoiser:
    """``model_out = den(x, t, cond)`` through ``torch.compile(unet)``.

    ``mode``: ``torch.compile`` mode (default: ``"reduce-overhead"`` on CUDA with static shapes, else
    inductor's default). ``dynamic``, ``fullgraph``, ``options`` and ``compile_backend`` (its
    ``backend``) go to ``torch.compile``.
    The caller's UNet module is not modified (``torch.compile`` wraps it).
    """

    def __init__(self, unet, *, mode: str | None = None, dynamic: bool = False, fullgraph: bool = False,
                 compile_backend: str = "inductor", options: dict | None = None):
        from noisefast.denoisers.unet import UNetDenoiser

        if not isinstance(unet, torch.nn.Module):
            raise TypeError(f"the compile backend needs a UNet module, got {type(unet).__name__}")
        on_cuda = next(unet.parameters()).device.type == "cuda"
        if mode is None and on_cuda and not dynamic and compile_backend == "inductor" and not options:
            mode = "reduce-overhead"
        if mode is not None and options:
            raise ValueError("give torch.compile either mode or options, not both")
        self.mode = mode
        self.compiled = torch.compile(unet, mode=mode, dynamic=dynamic, fullgraph=fullgraph, backend=compile_backend,
                                      options=options)
        self.inner = UNetDenoiser(self.compiled)
        # CUDA-graph modes hand out outputs that the next replay overwrites.
        graphs_mode = mode in ("reduce-overhead", "max-autotune") or bool((options or {}).get("triton.cudagraphs"))
        self._cudagraphs = on_cuda and graphs_mode

    in_channels = property(lambda self: self.inner.in_channels)
    sample_size = property(lambda self: self.inner.sample_size)
    dtype = property(lambda self: self.inner.dtype)
    device = property(lambda self: self.inner.device)

    def __repr__(self) -> str:
        return f"CompiledDenoiser({self.inner!r}, mode={self.mode!r})"

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W]
        t: torch.Tensor,  # [B] timesteps
        cond: Condition,  # batch B or 1
    ) -> torch.Tensor:  # [B, C, H, W] in x's dtype and device
        if not self._cudagraphs:
            return self.inner(x, t, cond)
        torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: earlier outputs are the caller's
        # The graph's output buffer is reused by the next replay: hand the caller its own tensor
        # (a latent-sized copy, negligible next to the UNet).
        return self.inner(x, t, cond).clone()
