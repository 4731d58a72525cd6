"""FlowSchedule against diffusers' FlowMatchEulerDiscreteScheduler itself: σ, timesteps, μ, the Euler loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from noisefast import ops
from noisefast.flow_schedule import FlowSchedule, calculate_shift, shift_for

# the configs real checkpoints ship (SD3/SD3.5: shift 3; FLUX.1-dev: dynamic; FLUX.1-schnell: shift 1), and the
# options the scheduler has (terminal stretch, re-spacing, linear time shift, inverted sigmas)
CONFIGS = {
    "default": {},
    "sd3": {"shift": 3.0},
    "flux-dev": {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},
    "flux-schnell": {"shift": 1.0, "use_dynamic_shifting": False},
    "terminal": {"shift": 3.0, "shift_terminal": 0.1},
    "karras": {"shift": 3.0, "use_karras_sigmas": True},
    "exponential": {"shift": 2.0, "use_exponential_sigmas": True},
    "linear-dynamic": {"use_dynamic_shifting": True, "time_shift_type": "linear"},
    "inverted": {"shift": 3.0, "invert_sigmas": True},
}
STEPS = [1, 2, 4, 7, 28]


def _diffusers(cfg, n, *, mu=None, linspace=False):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(**cfg)
    sigmas = np.linspace(1.0, 1 / n, n) if linspace else None  # what FluxPipeline passes
    sched.set_timesteps(None if linspace else n, sigmas=sigmas, mu=mu)
    return sched


def _mu(cfg, seq_len=1024):
    return shift_for(FlowSchedule.from_config(cfg | {"use_dynamic_shifting": False}, 1).config, seq_len) \
        if cfg.get("use_dynamic_shifting") else None


@pytest.mark.parametrize("linspace", [False, True], ids=["sd3-grid", "flux-linspace"])
@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sigmas_and_timesteps_bit_identical(name, n, linspace):
    cfg = CONFIGS[name]
    mu = _mu(cfg)
    if name == "terminal" and n == 1:  # 1 − σ_0 = 0: diffusers stretches by 0/0 = NaN; refused here
        with pytest.raises(ValueError, match="outside"):
            FlowSchedule.from_config(cfg, n, sigmas="linspace" if linspace else "scheduler")
        return
    ref = _diffusers(cfg, n, mu=mu, linspace=linspace)
    mine = FlowSchedule.from_config(cfg, n, mu=mu, sigmas="linspace" if linspace else "scheduler")
    assert list(mine.sigmas) == ref.sigmas.tolist()  # float32 values, bit for bit (terminal σ included)
    assert list(mine.denoise_timesteps) == ref.timesteps.tolist()
    for k, move in enumerate(mine.denoise_moves):
        assert (move.sigma_from, move.sigma_to) == (ref.sigmas[k].item(), ref.sigmas[k + 1].item())


@pytest.mark.parametrize("seq_len", [16, 256, 1024, 4096, 9000])
def test_calculate_shift_matches_the_pipelines(seq_len):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as flux_shift
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift as sd3_shift

    assert calculate_shift(seq_len) == flux_shift(seq_len) == sd3_shift(seq_len)
    assert calculate_shift(seq_len, 256, 4096, 0.5, 1.16) == flux_shift(seq_len, 256, 4096, 0.5, 1.16)


@pytest.mark.parametrize("name", ["sd3", "flux-dev", "inverted"])
def test_denoising_loop_equals_scheduler_step(name):
    """D with a velocity field v(x, t): noisefast's fused Euler moves vs ``scheduler.step`` in float32."""
    cfg, n = CONFIGS[name], 6
    mu = _mu(cfg, 300)
    ref = _diffusers(cfg, n, mu=mu)
    mine = FlowSchedule.from_config(cfg, n, mu=mu)
    velocity = lambda x, t: torch.sin(x) * (t / 1000) - 0.5 * x  # noqa: E731  (any smooth field)
    x0 = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    x_ref, x = x0.clone(), x0.clone()
    for t, move in zip(ref.timesteps, mine.denoise_moves):
        assert move.t == t.item()
        x_ref = ref.step(velocity(x_ref, t), t, x_ref, return_dict=False)[0]
        x = ops.ddim_move(x, velocity(x, torch.tensor(move.t)), *move.coefficients, prediction_type="flow")
    # each step: one rounding of x + dt·v that the kernel may fuse (FMA), contracted along the loop (|dt| ≤ 1)
    assert (x - x_ref).abs().max() <= n * 2.0**-23 * x_ref.abs().max()


@pytest.mark.parametrize("name", ["sd3", "flux-dev", "inverted"])
def test_inversion_moves_reverse_denoising(name):
    """I runs the n' moves backwards (σ ascending), reading the velocity where each move starts."""
    cfg = CONFIGS[name]
    sched = FlowSchedule.from_config(cfg, 4, 3, mu=_mu(cfg))
    inv = FlowSchedule.from_config(cfg, 3, mu=_mu(cfg))
    expect = [(m.sigma_to, m.sigma_from) for m in reversed(inv.denoise_moves)]
    assert [(m.sigma_from, m.sigma_to) for m in sched.invert_moves] == expect
    T = sched.config["num_train_timesteps"]
    for m in sched.invert_moves:  # t = σ_from·T in float32: the scheduler's timestep where σ_from is on its grid
        assert m.t == (torch.tensor(m.sigma_from) * T).item()
    assert sched.invert_moves[0].t == (T if cfg.get("invert_sigmas") else 0.0)
    # with a constant velocity the Euler inversion undoes the denoising exactly (up to float64 rounding)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = torch.randn_like(x)
    y = x
    for m in inv.denoise_moves:
        y = ops.ddim_move(y, v, *m.coefficients, prediction_type="flow")
    for m in FlowSchedule.from_config(cfg, 3, mu=_mu(cfg)).invert_moves:
        y = ops.ddim_move(y, v, *m.coefficients, prediction_type="flow")
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)


def test_config_from_a_scheduler_object_and_unknown_keys():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    cfg = dict(sched.config) | {"some_future_key": 1}
    a, b = FlowSchedule.from_config(sched, 5), FlowSchedule.from_config(cfg, 5)
    assert a.sigmas == b.sigmas and a.mu is None and a.num_inversion_steps == 5


@pytest.mark.parametrize("bad, err, match", [
    (dict(config={"use_dynamic_shifting": True}), ValueError, "mu is required"),
    (dict(config={"stochastic_sampling": True}), ValueError, "stochastic"),
    (dict(config={"use_beta_sigmas": True}), ValueError, "beta"),
    (dict(config={"shift": 0.0}), ValueError, "shift"),
    (dict(config={}, num_steps=0), ValueError, "num_steps"),
    (dict(config={}, num_steps=2.0), TypeError, "num_steps"),
    (dict(config={}, sigmas="karras"), ValueError, "sigmas"),
    (dict(config={}, bogus=1), TypeError, "unknown flow scheduler setting"),
])
def test_bad_configs(bad, err, match):
    kwargs = {"num_steps": 4} | bad
    config = kwargs.pop("config")
    with pytest.raises(err, match=match):
        FlowSchedule.from_config(config, kwargs.pop("num_steps"), **kwargs)
