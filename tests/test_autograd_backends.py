"""Compiled forward + torch backward: noise optimization through the forward-only backends (ONNX Runtime here).

Each checkpointed step runs its forward on the backend and recomputes itself in torch for the backward
(`noisefast.transform._RecomputedStep`), so the gradient is the torch UNet's Jacobian at the latents ONNX
Runtime produced. Error model (tests/_tolerance.py, flash rule): against the float64 all-torch gradient it may be
at most twice as wrong as the all-torch float32 gradient (plus ulps) — the two runtimes round the forward
latents differently by about the same amount (ORT 5–6e-7 relative per call, torch 0.9–1.1e-6).
"""

import pytest
import torch

from _tolerance import assert_close_to_reference, float64_denoiser

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from noisefast.denoisers.backends import make_denoiser  # noqa: E402
from noisefast.optimize import stability_grad  # noqa: E402
from noisefast.schedule import DDIMSchedule  # noqa: E402
from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition  # noqa: E402

SCHED = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, 1, 1)  # a guided denoising move, an inversion move
W = 5.5  # CFG in denoising: both halves of every denoising call go through the backend and back


@pytest.fixture(scope="module")
def ort_den(tiny_unet_loaded, tmp_path_factory):
    return make_denoiser(tiny_unet_loaded, "onnxruntime", num_threads=1, cache_dir=tmp_path_factory.mktemp("cache"))


def _noise():
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def test_gradient_through_onnxruntime_forward_matches_torch(ort_den, tiny_denoiser):
    cond, noise = tiny_condition(), _noise()
    s_ort, g_ort = stability_grad(ort_den, SCHED, noise, cond, W)  # forward: ORT; backward: torch recompute
    s_pt, g_pt = stability_grad(tiny_denoiser, SCHED, noise, cond, W)
    s_64, g_64 = stability_grad(float64_denoiser(tiny_denoiser), SCHED, noise.double(), cond.to(dtype=torch.float64), W)
    assert_close_to_reference(s_ort, s_pt, s_64, name="stability, ORT forward")
    assert_close_to_reference(g_ort, g_pt, g_64, name="gradient, ORT forward + torch backward")
    assert not torch.equal(g_ort, g_pt)  # the forward really ran elsewhere (ORT rounds differently)


def test_without_checkpointing_every_call_goes_through_torch(ort_den, tiny_denoiser):
    cond, noise = tiny_condition(), _noise()
    _, g_ort = stability_grad(ort_den, SCHED, noise, cond, W, checkpoint=False)
    _, g_pt = stability_grad(tiny_denoiser, SCHED, noise, cond, W, checkpoint=False)
    assert torch.equal(g_ort, g_pt)  # plain autograd records the torch UNet: the same computation


def test_a_bare_export_refuses_gradients_by_name(ort_den):
    bare = make_denoiser(ort_den.path, "onnxruntime", num_threads=1)  # no torch UNet to differentiate
    with pytest.raises(RuntimeError, match="built from an export without its torch UNet"):
        stability_grad(bare, SCHED, _noise(), tiny_condition(), W)


def test_engine_optimizes_on_onnxruntime(digits_engine_1thread):
    """`Engine.optimize` with ``backend="onnxruntime"``: the run climbs like the all-torch one (same first score
    within the magnitude model: 2 + 2 guided calls of ~100 ulps each, as tests/test_cli.py's ORT scores)."""
    from _tolerance import magnitude_atol

    from noisefast.config import EngineConfig
    from noisefast.pipeline import Engine

    model = digits_engine_1thread.model
    kw = dict(seeds=[79], iterations=2, steps=2, inversion_steps=2)
    config = EngineConfig(model="builtin:digits", threads=1)
    ort = Engine(model, config.replace(backend="onnxruntime")).optimize("a handwritten digit seven", **kw)
    pt = Engine(model, config.replace(backend="torch")).optimize("a handwritten digit seven", **kw)
    h_ort, h_pt = ort.result.history[:, 0], pt.result.history[:, 0]
    assert ort.result.steps_run == 2 and h_ort.shape == (3,)
    assert float(h_ort[-1]) > float(h_ort[0])
    assert abs(float(h_ort[0] - h_pt[0])) <= magnitude_atol(h_pt[0], steps=4, guidance=2.0, ulps=100)
