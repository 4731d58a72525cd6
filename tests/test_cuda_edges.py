"""CUDA edge cases of the fused ops (skip without CUDA): misaligned views, a non-default stream, a tensor on a
device other than the current one, more than 65535 rows. Each compares the op with `noisefast.ref` in fp64 with
the kernel tests' bound (`assert_flash_close`: at most twice torch's own error in the same dtype + 1 ulp)."""

import pytest
import torch

from noisefast import ops, ref
from _ops_helpers import HAS_CUDA, assert_flash_close, requires_extension

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU"), requires_extension]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _misaligned(B: int, N: int, dtype, device="cuda", seed=0) -> torch.Tensor:  # [B, N], data_ptr off by 1 element
    g = torch.Generator(device).manual_seed(seed)
    return torch.randn(B * N + 1, device=device, generator=g).to(dtype)[1:].view(B, N)


def _check_all_ops(make, device="cuda", dtype=torch.float32, what=""):
    """ddim_move (CFG), cosine and momentum (Nesterov + renorm) on tensors from ``make(seed)`` vs ref (fp64 and same dtype)."""
    x, m_c, m_u, g, v = (make(s) for s in range(5))
    B = x.shape[0]
    a_from = torch.linspace(0.05, 0.5, B, device=device, dtype=torch.float64)
    kw = dict(model_out_uncond=m_u, guidance_scale=5.5)
    out = ops.ddim_move(x, m_c, a_from, 0.7, **kw)
    want = ref.ddim_move(x.double(), m_c.double(), a_from, 0.7, model_out_uncond=m_u.double(), guidance_scale=5.5)
    same = ref.ddim_move(x, m_c, a_from.to(dtype), 0.7, **kw)
    assert_flash_close(f"ddim_move {what}", out, want, same)

    cos = ops.cosine_similarity(x, m_c)
    assert_flash_close(f"cosine {what}", cos, ref.cosine_similarity(x.double(), m_c.double()),
                       ref.cosine_similarity(x, m_c))

    norm = float(x[0].numel()) ** 0.5
    x64, v64 = x.double(), v.double()
    ref.momentum_step_(x64, g.double(), v64, lr=0.1, momentum=0.5, nesterov=True, renorm=norm)
    xs, vs = x.clone(), v.clone()
    ref.momentum_step_(xs, g, vs, lr=0.1, momentum=0.5, nesterov=True, renorm=norm)
    ops.momentum_step_(x, g, v, lr=0.1, momentum=0.5, nesterov=True, renorm=norm)
    assert_flash_close(f"momentum x {what}", x, x64, xs)
    assert_flash_close(f"momentum v {what}", v, v64, vs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N", [1024, 1031])  # a vector-width multiple, and not
def test_misaligned_views(dtype, N):
    def make(seed):
        t = _misaligned(3, N, dtype, seed=seed)
        assert t.is_contiguous() and t.data_ptr() % 16 != 0
        return t

    _check_all_ops(make, dtype=dtype, what=f"misaligned {dtype} N={N}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_default_stream(dtype):
    """The ops launch on the current stream: inputs written there after a long sleep are read after the write."""
    side = torch.cuda.Stream()
    src = [torch.randn(4, 4096, device="cuda", generator=torch.Generator("cuda").manual_seed(s)).to(dtype) for s in range(5)]
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        bufs = [torch.empty_like(t) for t in src]
        torch.cuda._sleep(50_000_000)  # ~tens of ms on the side stream: a kernel elsewhere would read too early
        for b, t in zip(bufs, src):
            b.copy_(t)
        x, m_c, m_u, g, v = bufs
        out = ops.ddim_move(x, m_c, 0.1, 0.6, model_out_uncond=m_u, guidance_scale=5.5)
        cos = ops.cosine_similarity(x, m_c)
        ops.momentum_step_(g, m_u, v, lr=0.1, momentum=0.5)
    side.synchronize()
    assert_flash_close("ddim_move on a side stream", out,
                       ref.ddim_move(src[0].double(), src[1].double(), 0.1, 0.6, model_out_uncond=src[2].double(),
                                     guidance_scale=5.5),
                       ref.ddim_move(src[0], src[1], 0.1, 0.6, model_out_uncond=src[2], guidance_scale=5.5))
    assert_flash_close("cosine on a side stream", cos, ref.cosine_similarity(src[0].double(), src[1].double()),
                       ref.cosine_similarity(src[0], src[1]))
    g64, v64 = src[3].double(), src[4].double()
    ref.momentum_step_(g64, src[2].double(), v64, lr=0.1, momentum=0.5)
    gs, vs = src[3].clone(), src[4].clone()
    ref.momentum_step_(gs, src[2], vs, lr=0.1, momentum=0.5)
    assert_flash_close("momentum on a side stream", g, g64, gs)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensor_on_another_device_than_the_current():
    assert torch.cuda.current_device() == 0
    _check_all_ops(lambda s: torch.randn(5, 333, device="cuda:1", generator=torch.Generator("cuda:1").manual_seed(s)),
                   device="cuda:1", what="on cuda:1 while cuda:0 is current")
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_more_than_65535_rows(dtype):
    """Grids must not put B on a 65535-limited dimension."""
    B = 70_001
    _check_all_ops(lambda s: torch.randn(B, 12, device="cuda", generator=torch.Generator("cuda").manual_seed(s)).to(dtype),
                   dtype=dtype, what=f"B={B}")
