"""DDIMSchedule vs diffusers' DDIMScheduler / DDIMInverseScheduler: timesteps and every step, bit for bit."""

import json

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, EulerDiscreteScheduler

from noisefast import ref
from noisefast.schedule import DDIMSchedule, Move
from noisefast.testing import SDXL_EULER_SCHEDULER_CONFIG as SDXL

CONFIGS = {
    "sdxl": SDXL,  # leading, steps_offset 1, set_alpha_to_one False, clip_sample → True (DDIM default)
    "turbo": SDXL | {"timestep_spacing": "trailing"},
    "linspace": SDXL | {"timestep_spacing": "linspace"},
    "v_pred_alpha1": SDXL | {"prediction_type": "v_prediction", "set_alpha_to_one": True, "clip_sample": False},
    "zero_snr": {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "cosine": {"beta_schedule": "squaredcos_cap_v2", "clip_sample_range": 2.0, "steps_offset": 0},
    "ddim_defaults": {},
}


# One float32 move computed two algebraically different ways (ref's affine form vs diffusers' x̂₀ route):
# relative error ≲ κ · a few eps32 with κ = (|c_x|‖x‖ + |c_m|‖m‖)/‖x'‖ ≤ ~4 for these schedules, so
# ONE_MOVE_REL = 16 eps32 ≈ 9.5e-7 (pure torch on both sides: no CPU-ISA dependence).
ONE_MOVE_REL = 16 * 2.0**-24


def _walk(sched_step, moves, sched, gen):
    """Step diffusers and ddim_move side by side on random latents/model outputs; max relative error."""
    x = torch.randn(2, 4, 8, 8, generator=gen)
    worst = 0.0
    for mv in moves:
        m = torch.randn(2, 4, 8, 8, generator=gen)
        expected = sched_step(m, mv.t, x).prev_sample
        got = ref.ddim_move(
            x, m, mv.alpha_from, mv.alpha_to, prediction_type=sched.prediction_type, clip_sample_range=sched.clip_sample_range
        )
        worst = max(worst, float((got - expected).norm() / expected.norm()))
        x = expected
    return worst


@pytest.mark.parametrize("steps", [1, 4, 10, 50])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_moves_match_diffusers_step_by_step(name, steps):
    cfg = CONFIGS[name]
    sched = DDIMSchedule.from_config(cfg, steps)
    gen = torch.Generator().manual_seed(steps)

    ddim = DDIMScheduler.from_config(cfg)
    ddim.set_timesteps(steps)
    assert sched.denoise_timesteps == tuple(ddim.timesteps.tolist())
    assert torch.equal(sched.alphas_cumprod.float(), ddim.alphas_cumprod)
    assert _walk(ddim.step, sched.denoise_moves, sched, gen) <= ONE_MOVE_REL

    if cfg.get("timestep_spacing") == "linspace":
        with pytest.raises(ValueError):  # diffusers refuses to invert a linspace grid; noisefast extends it
            DDIMInverseScheduler.from_config(cfg).set_timesteps(steps)
        assert sched.invert_timesteps == sched.denoise_timesteps[::-1]
        return
    inv = DDIMInverseScheduler.from_config(cfg)
    inv.set_timesteps(steps)
    assert sched.invert_timesteps == tuple(inv.timesteps.tolist())
    assert _walk(inv.step, sched.invert_moves, sched, gen) <= ONE_MOVE_REL


def test_sdxl_moves_read_like_diffusers():
    sched = DDIMSchedule.from_config(SDXL, 4, num_inversion_steps=2)
    ac = sched.alphas_cumprod.tolist()
    assert sched.denoise_timesteps == (751, 501, 251, 1)
    assert sched.denoise_moves[0] == Move(751, ac[751], ac[501])
    assert sched.denoise_moves[-1] == Move(1, ac[1], ac[0])  # set_alpha_to_one=False: final ᾱ = ᾱ_0
    assert sched.invert_moves == (Move(1, ac[0], ac[1]), Move(501, ac[1], ac[501]))  # initial ᾱ = ᾱ_0
    assert sched.clip_sample_range == 1.0  # the Euler config has no clip_sample: DDIM's default (True)
    assert sched.num_steps == 4 and sched.num_inversion_steps == 2
    one = DDIMSchedule.from_config(SDXL, 4, set_alpha_to_one=True, clip_sample=False)
    assert one.denoise_moves[-1].alpha_to == 1.0 and one.invert_moves[0].alpha_from == 1.0
    assert one.clip_sample_range is None
    assert "denoise_timesteps=[751, 501, 251, 1]" in repr(sched)


def test_config_sources(tmp_path):
    expected = DDIMSchedule.from_config(SDXL, 4).denoise_moves
    euler = EulerDiscreteScheduler.from_config(SDXL)
    (tmp_path / "scheduler_config.json").write_text(json.dumps(SDXL))
    for source in (euler, euler.config, tmp_path, tmp_path / "scheduler_config.json", str(tmp_path)):
        assert DDIMSchedule.from_config(source, 4).denoise_moves == expected
    turbo = DDIMSchedule.from_config(euler, 4, timestep_spacing="trailing")
    assert turbo.denoise_timesteps == (999, 749, 499, 249)


@pytest.mark.parametrize(
    "config, steps, kwargs, error, match",
    [
        (SDXL, 0, {}, ValueError, "num_steps must be in"),
        (SDXL, 1001, {}, ValueError, "num_steps must be in"),
        (SDXL, 2.0, {}, TypeError, "num_steps must be an int"),
        (SDXL, 4, {"num_inversion_steps": 0}, ValueError, "num_inversion_steps"),
        (SDXL, 4, {"prediction_type": "sample"}, ValueError, "prediction_type"),
        (SDXL, 4, {"timestep_spacing": "karras"}, ValueError, "timestep_spacing"),
        (SDXL, 4, {"thresholding": True}, ValueError, "thresholding"),
        (SDXL, 4, {"clip_sample_range": 0.0}, ValueError, "clip_sample_range"),
        (SDXL, 4, {"beta_schedule": "cubic"}, ValueError, "beta_schedule"),
        (SDXL, 4, {"trained_betas": [0.1] * 3}, ValueError, "trained_betas"),
        (SDXL, 4, {"guidance": 3}, TypeError, "unknown DDIM scheduler setting"),
        (SDXL, 1000, {}, ValueError, "outside|within"),  # leading + steps_offset 1 → timestep 1000
        (SDXL | {"timestep_spacing": "trailing"}, 61, {}, ValueError, "62 timesteps"),  # np.arange round-off
        ([1, 2], 4, {}, TypeError, "config must be"),
        ("/nonexistent/folder", 4, {}, ValueError, "no scheduler config"),
    ],
)
def test_bad_input(config, steps, kwargs, error, match):
    with pytest.raises(error, match=match):
        DDIMSchedule.from_config(config, steps, **kwargs)
