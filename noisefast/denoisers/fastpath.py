"""The GPU fast path's UNet preparation: what a latency-bound user (SDXL-Turbo: 1+1 steps, 512², no CFG — a few
small UNet calls, so launch overhead and Python matter) switches on, each behind one option.

    opts = FastPathOptions(dtype="float16", channels_last=True, attention="sdpa", cuda_graph=True, pinned=True)
    unet = prepare_unet(unet, opts)                 # in place: dtype, memory format, attention processors
    den = FastPathDenoiser(unet, opts)              # channels_last inputs, the SDPA backend choice per call
    scorer = noisefast.graphs.GraphedScorer(den, sched, cond, batch=8, shape=(4, 64, 64), pinned=opts.pinned)

Options (all off by default: the plain path):
  dtype          "float16" / "bfloat16": the UNet's weights, and the noise and condition the scorer feeds it,
                 in that dtype end to end (no per-call casts). None keeps the UNet's dtype.
  channels_last  weights and inputs in ``torch.channels_last``: cuDNN/cuBLAS-Lt convolutions run NHWC
                 (tensor cores) without per-layer transposes.
  attention      "default": keep the UNet's processors; "sdpa": diffusers ``AttnProcessor2_0``
                 (``torch.nn.functional.scaled_dot_product_attention``, torch picks the kernel); "flash",
                 "efficient", "cudnn", "math": SDPA limited to that kernel (``torch.nn.attention.sdpa_kernel``
                 around every call) — an error at the first call where the kernel cannot run the shapes.
  fuse_qkv       one [Q;K;V] projection matmul per self-attention (diffusers ``fuse_qkv_projections``).
  cuda_graph     capture the whole denoise → invert → cosine chain once per batch and replay it
                 (`noisefast.graphs.GraphedScorer`; CUDA only).
  pinned         draw each seed's noise on the CPU generator into page-locked buffers and copy it to the GPU
                 ``non_blocking`` (`noisefast.hostnoise.SeedNoise`): the draw of the next chunk overlaps the
                 GPU work of this one.
Every option leaves the scores equal to the plain path's within the dtype's rounding (tested on the CPU with
the tiny UNet for dtype-free options; the CUDA-only ones are checked by bench/gpu_check.sh).
"""

from __future__ import annotations

import contextlib

import torch

from noisefast.config import ATTENTION, FastPathOptions
from noisefast.denoisers.base import Condition

def _sdpa_backends(attention: str):
    """The ``SDPBackend`` list for one kernel name (None: let torch choose)."""
    if attention in ("default", "sdpa"):
        return None
    from torch.nn.attention import SDPBackend

    return [{"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[attention]]


def prepare_unet(unet, opts: FastPathOptions):
    """Apply ``opts``' dtype, memory format and attention processors to ``unet`` in place; returns it.

    Idempotent. The UNet must be a diffusers ``UNet2DConditionModel`` (anything with ``set_attn_processor``
    for the attention options). ``cuda_graph`` and ``pinned`` concern the scorer, not the module.
    """
    if not isinstance(opts, FastPathOptions):
        raise TypeError(f"opts must be FastPathOptions, got {type(opts).__name__}")
    if not isinstance(unet, torch.nn.Module):
        raise TypeError(f"prepare_unet needs a UNet module, got {type(unet).__name__}")
    if opts.torch_dtype is not None:
        unet.to(dtype=opts.torch_dtype)
    if opts.channels_last:
        unet.to(memory_format=torch.channels_last)
    if opts.attention != "default" or opts.fuse_qkv:
        if not hasattr(unet, "set_attn_processor"):
            raise TypeError(f"attention={opts.attention!r}/fuse_qkv need a diffusers UNet, got {type(unet).__name__}")
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())
    if opts.fuse_qkv:
        unet.fuse_qkv_projections()  # sets FusedAttnProcessor2_0 (SDPA) on the fused layers
    return unet


class FastPathDenoiser:
    """`UNetDenoiser` over a `prepare_unet`-ed UNet: channels_last inputs, the chosen SDPA kernel per call.

    Same protocol and results as ``UNetDenoiser(unet)`` (``model_out = den(x, t, cond)``, in x's dtype and device).
    """

    def __init__(self, unet, opts: FastPathOptions = FastPathOptions()):
        from noisefast.denoisers.unet import UNetDenoiser

        if not isinstance(opts, FastPathOptions):
            raise TypeError(f"opts must be FastPathOptions, got {type(opts).__name__}")
        self.inner = UNetDenoiser(unet)
        self.opts = opts
        self._backends = _sdpa_backends(opts.attention)

    unet = property(lambda self: self.inner.unet)
    in_channels = property(lambda self: self.inner.in_channels)
    sample_size = property(lambda self: self.inner.sample_size)
    dtype = property(lambda self: self.inner.dtype)
    device = property(lambda self: self.inner.device)

    def _context(self):
        if self._backends is None:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(self._backends)

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W]
        t: torch.Tensor,  # [B] timesteps
        cond: Condition,  # batch B or 1
    ) -> torch.Tensor:  # [B, C, H, W] in x's dtype and device (contiguous)
        if self.opts.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._context():
            out = self.inner(x, t, cond)
        # the fused DDIM move reads contiguous memory: one layout change here rather than a copy inside the op
        return out.contiguous()

    def __repr__(self) -> str:
        return f"FastPathDenoiser({self.inner!r}, {self.opts})"


def fast_denoiser(unet, opts: FastPathOptions) -> FastPathDenoiser:
    """``FastPathDenoiser(prepare_unet(unet, opts), opts)``: the one call an Engine makes."""
    return FastPathDenoiser(prepare_unet(unet, opts), opts)
