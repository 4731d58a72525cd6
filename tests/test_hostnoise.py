"""Seed noise through reusable (pinned) host buffers equals noise_from_seeds bit for bit."""

import pytest
import torch

from noisefast.hostnoise import SeedNoise, draw_into
from noisefast.seeds import noise_from_seeds

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(4, 8, 8), (1, 2, 3), (4, 17, 9)], ids=str)  # 256, 6 (< 16: scalar draw), 612
def test_draw_into_is_noise_from_seeds_bit_for_bit(dtype, shape):
    seeds = [0, 1, 42, 2**63 - 1]
    buf = torch.full((6, *shape), float("nan"), dtype=dtype)
    got = draw_into(buf, seeds)
    assert got.shape == (4, *shape) and torch.isnan(buf[4:]).all()
    assert torch.equal(got, noise_from_seeds(seeds, shape, dtype=dtype))


def test_draw_into_refuses_plainly():
    with pytest.raises(ValueError, match="do not fit"):
        draw_into(torch.empty(1, 4), [0, 1])
    with pytest.raises(ValueError, match="contiguous"):
        draw_into(torch.empty(4, 2).t(), [0])
    with pytest.raises(TypeError, match="ints"):
        draw_into(torch.empty(2, 4), [0.5])


def test_seed_noise_on_cpu_reuses_its_buffers():
    sn = SeedNoise((4, 8, 8), batch=3)
    assert not sn.pinned
    outs = [sn(chunk) for chunk in ([0, 1, 2], [3, 4], [5, 6, 7])]  # both buffers reused: each result its own tensor
    assert torch.equal(torch.cat(outs), noise_from_seeds(range(8), (4, 8, 8)))
    static = torch.zeros(3, 4, 8, 8)
    assert sn([9], out=static).data_ptr() == static.data_ptr()
    assert torch.equal(static[:1], noise_from_seeds([9], (4, 8, 8))) and not static[1:].any()
    with pytest.raises(ValueError, match="exceed"):
        sn(range(4))
    with pytest.raises(ValueError, match="out must be"):
        sn([0], out=torch.zeros(3, 4, 8, 9))
    with pytest.raises(ValueError, match="CUDA"):
        SeedNoise((4, 8, 8), 2, pinned=True)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_pinned_seed_noise_on_cuda(dtype):
    sn = SeedNoise((4, 64, 64), batch=4, dtype=dtype, device="cuda")
    assert sn.pinned and sn._host[0].is_pinned()
    outs = [sn(range(lo, lo + 4)) for lo in range(0, 16, 4)]
    want = noise_from_seeds(range(16), (4, 64, 64), dtype=dtype, device="cuda")
    assert torch.equal(torch.cat(outs), want)
