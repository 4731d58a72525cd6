"""The ``compile`` backend: `UNetDenoiser` over a ``torch.compile``-d UNet, forward only; gradients in eager torch.

Compilations, and why there are so few (`compiled_graphs` counts them):

1. **Dynamic batch** (``dynamic=True``): one graph serves a whole range of batch sizes instead of one graph per
   size (the old ``dynamic=False`` compiled each batch bucket, CFG-doubled batch and last short batch anew, each
   seconds of tracing even with inductor's cache warm). The ranges are set by branches on the batch that dynamo
   must guard: diffusers' upsampler (``if hidden_states.shape[0] >= 64``), torch's choice of convolution backend
   and dynamo's specialisation of size 1 — measured on CPU: 1, 2–15, 16–63, ≥ 64; each compiled once.
2. **One kind of input tensor**: dynamo guards on whether an input is an inference tensor and on its strides;
   the scoring chain hands the UNet normal tensors at its first step and inference tensors after (and a
   broadcast condition has stride 0), which compiled graphs again. Calls run under ``torch.inference_mode`` on
   contiguous inference tensors only (an input that is not one is cloned: a latent-sized copy).
3. **No restarted trace**: python floats stay specialised (``specialize_float``), which spares dynamo a second
   full trace of the UNet (its "restart analysis" for tensorified scalars) on every compilation.
4. **Persistent caches**: inductor's FX-graph and AOT-autograd caches live in the noisefast cache folder
   (`noisefast.denoisers.cache.use_inductor_cache`), so another process skips inductor's code generation
   (240 s → 45 s for the built-in model's three graphs); dynamo still traces the UNet once per graph and process.

Why it loses on CPU (bench/results/compile-cpu-2026-12-07.md, builtin:digits, 200 seeds): the warm run pays
dynamo's trace of the UNet again in every process, per graph — 35 s (static shapes, 4 graphs) or 45 s
(dynamic batch, 3 graphs: symbolic shapes trace slower) of a select eager torch finishes in ~10 s — and
then runs 1.07× eager per call, behind ONNX Runtime. So ``backend="auto"`` does not try it on CPU
(`noisefast.denoisers.auto`). On CUDA the default mode is ``"reduce-overhead"`` (inductor with CUDA graphs:
removes the launch overhead of the UNet's hundreds of kernels).

Gradients: a call whose inputs require grad runs the eager UNet (``autograd``), so noise optimization
runs each checkpointed step's forward compiled and recomputes it in eager torch for the backward — no
backward graph is ever compiled.
"""

from __future__ import annotations

import torch

from noisefast.denoisers.base import Condition, wants_grad


def _inference(v: torch.Tensor) -> torch.Tensor:
    """``v`` as a contiguous inference tensor (dynamo guards on both: a broadcast condition row has stride 0)."""
    return v if v.is_inference() and v.is_contiguous() else v.clone(memory_format=torch.contiguous_format)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (``torch._dynamo.utils.counters``)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledDenoiser:
    """``model_out = den(x, t, cond)`` through ``torch.compile(unet)``.

    ``mode``: ``torch.compile`` mode (default: ``"reduce-overhead"`` on CUDA, else inductor's default).
    ``dynamic`` (default True: one graph for every batch size), ``fullgraph``, ``options`` and ``compile_backend``
    (its ``backend``) go to ``torch.compile``. ``cache_dir``: the noisefast cache folder whose ``inductor/``
    holds inductor's persistent caches (unless ``TORCHINDUCTOR_CACHE_DIR`` is set). The caller's UNet module is
    not modified (``torch.compile`` wraps it).
    """

    backend = "compile"

    def __init__(self, unet, *, mode: str | None = None, dynamic: bool = True, fullgraph: bool = False,
                 compile_backend: str = "inductor", options: dict | None = None, cache_dir=None):
        from noisefast.denoisers.cache import cache_dir as cache_root, use_inductor_cache
        from noisefast.denoisers.unet import UNetDenoiser

        if not isinstance(unet, torch.nn.Module):
            raise TypeError(f"the compile backend needs a UNet module, got {type(unet).__name__}")
        on_cuda = next(unet.parameters()).device.type == "cuda"
        if mode is None and on_cuda and compile_backend == "inductor" and not options:
            mode = "reduce-overhead"
        if mode is not None and options:
            raise ValueError("give torch.compile either mode or options, not both")
        if compile_backend == "inductor":
            use_inductor_cache(cache_root(cache_dir))
        self.mode = mode
        self.autograd = UNetDenoiser(unet)  # gradients: eager torch
        self.compiled = torch.compile(unet, mode=mode, dynamic=dynamic, fullgraph=fullgraph, backend=compile_backend,
                                      options=options)
        self.inner = UNetDenoiser(self.compiled)
        # CUDA-graph modes hand out outputs that the next replay overwrites.
        graphs_mode = mode in ("reduce-overhead", "max-autotune") or bool((options or {}).get("triton.cudagraphs"))
        self._cudagraphs = on_cuda and graphs_mode

    in_channels = property(lambda self: self.inner.in_channels)
    sample_size = property(lambda self: self.inner.sample_size)
    dtype = property(lambda self: self.autograd.dtype)
    device = property(lambda self: self.autograd.device)

    def __repr__(self) -> str:
        return f"CompiledDenoiser({self.autograd!r}, mode={self.mode!r})"

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W]
        t: torch.Tensor,  # [B] timesteps
        cond: Condition,  # batch B or 1
    ) -> torch.Tensor:  # [B, C, H, W] in x's dtype and device
        if wants_grad(x, cond):
            return self.autograd(x, t, cond)
        with torch.inference_mode(), torch._dynamo.config.patch(specialize_float=True):
            if self._cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: earlier outputs are the caller's
            out = self.inner(_inference(x), _inference(torch.as_tensor(t)), cond._map(_inference))
            # CUDA graphs: the output buffer is reused by the next replay, so the caller gets its own tensor
            # (a latent-sized copy, negligible next to the UNet).
            return out.clone() if self._cudagraphs else out
