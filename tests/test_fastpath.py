"""Fast-path UNet preparation (noisefast.denoisers.fastpath) scores what the plain path scores.

Tolerance (error model, as noisefast.bench.scoring.score_tolerance): 16 units of fp32 rounding per UNet call, added over
the chain — other memory formats and attention kernels round differently, nothing more."""

import pytest
import torch

from noisefast.denoisers.fastpath import FastPathDenoiser, FastPathOptions, fast_denoiser, prepare_unet
from noisefast.denoisers.unet import UNetDenoiser
from noisefast.schedule import DDIMSchedule
from noisefast.stability import stability_score
from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition, tiny_unet

STEPS = 2


def _tolerance(calls: int) -> float:
    return 16 * torch.finfo(torch.float32).eps * calls


def _scores(den, guidance):
    sched = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, STEPS, STEPS)
    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return stability_score(den, sched, noise, tiny_condition(), guidance, 1.0)


OPTIONS = [
    FastPathOptions(channels_last=True),
    FastPathOptions(attention="sdpa"),
    FastPathOptions(attention="math"),
    FastPathOptions(attention="flash"),  # torch's CPU flash-attention kernel
    FastPathOptions(fuse_qkv=True),
    FastPathOptions(channels_last=True, attention="sdpa", fuse_qkv=True, cuda_graph=True, pinned=True),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.as_dict().items() if v not in (None, False, "default")))
@pytest.mark.parametrize("guidance", [0.0, 5.0], ids=["no-cfg", "cfg"])
def test_prepared_unet_scores_like_the_plain_one(opts, guidance):
    plain = _scores(UNetDenoiser(tiny_unet()), guidance)
    fast = _scores(fast_denoiser(tiny_unet(), opts), guidance)
    assert fast.shape == plain.shape == (3,) and torch.isfinite(fast).all()
    assert (fast - plain).abs().max().item() <= _tolerance(2 * STEPS), (fast, plain)


def test_prepare_unet_sets_what_it_says():
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = tiny_unet()
    assert prepare_unet(unet, FastPathOptions(dtype="bfloat16", channels_last=True, attention="sdpa")) is unet
    assert unet.dtype == torch.bfloat16
    conv = unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}
    prepare_unet(unet, FastPathOptions(dtype="bfloat16", channels_last=True, attention="sdpa"))  # idempotent


def test_bfloat16_end_to_end_stays_close():
    """dtype='bfloat16': same scores within bf16 rounding (16 ulps of bf16 per call)."""
    plain = _scores(UNetDenoiser(tiny_unet()), 0.0)
    den = fast_denoiser(tiny_unet(), FastPathOptions(dtype="bfloat16"))
    assert den.dtype == torch.bfloat16
    fast = _scores(den, 0.0)  # fp32 noise in, the UNet in bf16
    assert (fast - plain).abs().max().item() <= 16 * torch.finfo(torch.bfloat16).eps * 2 * STEPS


def test_options_refuse_plainly():
    with pytest.raises(ValueError, match="attention must be one of"):
        FastPathOptions(attention="xformers")
    with pytest.raises(ValueError, match="dtype must be one of"):
        FastPathOptions(dtype="int8")
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        FastPathOptions(channels_last=1)
    with pytest.raises(TypeError, match="FastPathOptions"):
        prepare_unet(tiny_unet(), {"channels_last": True})
    with pytest.raises(TypeError, match="UNet module"):
        prepare_unet(object(), FastPathOptions())
    assert FastPathOptions.turbo().cuda_graph and FastPathOptions().as_dict()["attention"] == "default"


def test_denoiser_protocol_and_layout():
    den = FastPathDenoiser(prepare_unet(tiny_unet(), FastPathOptions(channels_last=True)), FastPathOptions(channels_last=True))
    assert (den.in_channels, den.dtype, den.device.type) == (4, torch.float32, "cpu")
    out = den(torch.randn(2, 4, 16, 16), torch.tensor([999, 999]), tiny_condition())
    assert out.shape == (2, 4, 16, 16) and out.is_contiguous()
    assert "FastPathDenoiser" in repr(den)


def test_engine_fast_path_scores_like_the_plain_engine_and_says_when_graphs_are_off():
    """Engine(fast_path=...) on the CPU: channels_last + SDPA prepared UNet, CUDA graphs refused with one warning."""
    from noisefast.denoisers.fastpath import FastPathOptions
    from noisefast.pipeline import Engine

    plain = Engine.from_pretrained("builtin:digits", device="cpu")
    fast = Engine.from_pretrained("builtin:digits", device="cpu",
                                  fast_path=FastPathOptions(channels_last=True, attention="sdpa", cuda_graph=True))  # fmt: skip
    kw = dict(steps=2, inversion_steps=2)
    with pytest.warns(UserWarning, match="CUDA-graph scoring is off"):
        got = fast.score("a handwritten digit three", range(4), **kw)
    want = plain.score("a handwritten digit three", range(4), **kw)
    # same ops in another memory format: rounding only, ≤ 4 moves × (1 + |w|) × √D × ε₃₂ (error model)
    tol = 4 * (1 + 2.0) * (8 * 8) ** 0.5 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
