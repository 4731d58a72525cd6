"""Zero terminal SNR (``rescale_betas_zero_snr=True``, trailing spacing: ᾱ_999 = 0) through the fused path.

Every (prediction type × direction) is run through the public functions and compared with diffusers'
``DDIMScheduler`` / ``DDIMInverseScheduler`` loops. Error model: noisefast in float32 must be as close to a
float64 diffusers run as diffusers' own float32 run is, within a factor 2 plus a few float32 ulps of the
result's magnitude — no tolerance printed by one machine.

What diffusers gives at ᾱ = 0 (checked in `test_refused_exactly_where_diffusers_is_not_finite`):
* v prediction, denoising from ᾱ = 0: x̂₀ = −v, ε̂ = x — finite;
* inversion onto ᾱ = 0 (epsilon and v): x' = ε̂ — finite;
* epsilon prediction, denoising from ᾱ = 0: x̂₀ = (x − ε)/0 — ±inf, then NaN; with ``clip_sample`` the
  clamp makes it ±1 by the sign of the model's error, NaN for an exact model (ε = x at ᾱ = 0). Refused.
"""

import copy

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

import noisefast as nf
from noisefast import ops, ref
from noisefast.denoisers.gmm import GaussianMixtureDenoiser
from noisefast.schedule import DDIMSchedule
from noisefast.testing import SDXL_SCHEDULER_CONFIG

ZSNR = SDXL_SCHEDULER_CONFIG | {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
PREDICTIONS = ["epsilon", "v_prediction"]
F32_EPS = torch.finfo(torch.float32).eps


def config(prediction_type, clip):
    return ZSNR | {"prediction_type": prediction_type, "clip_sample": clip}


def assert_within_diffusers_error(got, d32, d64, what):
    """|got − d64| ≤ 2·|d32 − d64| + 4 ulp(max |d64|), max over elements; both runs must be finite."""
    assert torch.isfinite(d64).all() and torch.isfinite(d32).all(), f"{what}: diffusers is not finite"
    assert torch.isfinite(got).all(), f"{what}: noisefast is not finite"
    err = float((got.double() - d64.double()).abs().max())
    ref_err = float((d32.double() - d64.double()).abs().max())
    bound = 2 * ref_err + 4 * F32_EPS * float(d64.abs().max())
    assert err <= bound, f"{what}: error {err:.3g} vs float64 diffusers > 2 × diffusers' float32 error {ref_err:.3g} + 4 ulp"


def gmm(sched, prediction_type, dtype):
    """The exact ε/v of a 3-component Gaussian mixture on 4×8×8 latents (ᾱ = 0 allowed: x̂₀ = E[x₀], ε = x)."""
    return GaussianMixtureDenoiser.random((4, 8, 8), 3, sched, seed=1, dtype=dtype, prediction_type=prediction_type)


def gmm_condition(den):
    return den.condition(torch.tensor([[1.5, -0.5, 0.0], [0.0, 2.0, -1.0]]))  # two samples, two class mixes


def diffusers_loop(scheduler_cls, cfg, steps, x, den, cond):
    """x stepped through ``scheduler_cls.from_config(cfg)`` with the conditional model output at every t."""
    s = scheduler_cls.from_config(cfg)
    s.set_timesteps(steps)
    for t in s.timesteps:
        m = den(x, t.expand(x.shape[0]), cond)
        x = s.step(m, t, x).prev_sample
    return x


def loops_32_64(scheduler_cls, cfg, steps, x, prediction_type, sched):
    """diffusers' loop in float32 and float64 (model, latents and step arithmetic)."""
    out = []
    for dtype in (torch.float32, torch.float64):
        den = gmm(sched, prediction_type, dtype)
        out.append(diffusers_loop(scheduler_cls, cfg, steps, x.to(dtype), den, gmm_condition(den)))
    return out


# --- where diffusers is finite, and where noisefast refuses ----------------------------------------------


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_refused_exactly_where_diffusers_is_not_finite(prediction_type, clip):
    cfg = config(prediction_type, clip)
    ac = DDIMScheduler.from_config(cfg).alphas_cumprod
    assert float(ac[-1]) == 0.0  # zero terminal SNR, as diffusers computes it
    den = gmm(ac.double(), prediction_type, torch.float64)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        denoised = diffusers_loop(DDIMScheduler, cfg, 4, x, den, gmm_condition(den))
        inverted = diffusers_loop(DDIMInverseScheduler, cfg, 4, x, den, gmm_condition(den))
    assert torch.isfinite(inverted).all()  # inversion ends on ᾱ = 0: x' = ε̂, always finite
    assert bool(torch.isfinite(denoised).all()) == (prediction_type == "v_prediction")
    if prediction_type == "v_prediction":
        sched = DDIMSchedule.from_config(cfg, 4)
        assert sched.denoise_moves[0].alpha_from == 0.0 and sched.invert_moves[-1].alpha_to == 0.0
        return
    with pytest.raises(ValueError, match=r"prediction_type='epsilon' cannot take the denoising step at t=999 from "
                                         r"ᾱ = 0 \(rescale_betas_zero_snr=True makes ᾱ_999 = 0\)") as e:
        DDIMSchedule.from_config(cfg, 4)
    assert "\n" not in str(e.value)
    # the inversion alone is defined: an inversion-only schedule (num_steps=0) runs it
    inv_only = DDIMSchedule.from_config(cfg, 0, num_inversion_steps=4)
    assert inv_only.num_steps == 0 and inv_only.invert_moves[-1].alpha_to == 0.0
    with pytest.raises(ValueError, match="sched has no denoise steps"):
        nf.denoise(den, inv_only, x, gmm_condition(den))
    with pytest.raises(ValueError, match="num_steps must be in"):
        DDIMSchedule.from_config(cfg, 0)


# --- the public functions against diffusers' loops -------------------------------------------------------

CASES = [(p, clip, d) for p in PREDICTIONS for clip in (False, True) for d in ("denoise", "invert", "score")
         if not (p == "epsilon" and d != "invert")]  # epsilon: only the inversion is defined (see above)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("prediction_type, clip, direction", CASES, ids=[f"{p[:3]}-clip{c}-{d}" for p, c, d in CASES])
def test_public_functions_match_diffusers(prediction_type, clip, direction, steps):
    cfg = config(prediction_type, clip)
    sched = DDIMSchedule.from_config(cfg, 0 if prediction_type == "epsilon" else steps, num_inversion_steps=steps)
    den = gmm(sched, prediction_type, torch.float32)
    cond = gmm_condition(den)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps))  # ε, or x₀ to invert
    with torch.no_grad():
        if direction == "denoise":
            assert sched.denoise_moves[0].alpha_from == 0.0
            got = nf.denoise(den, sched, x, cond, guidance_scale=1.0)
            d32, d64 = loops_32_64(DDIMScheduler, cfg, steps, x, prediction_type, sched)
        elif direction == "invert":
            assert sched.invert_moves[-1].alpha_to == 0.0
            got = nf.invert(den, sched, x, cond, guidance_scale=1.0)
            d32, d64 = loops_32_64(DDIMInverseScheduler, cfg, steps, x, prediction_type, sched)
        else:  # s(ε) = cos(ε, I(D(ε))), each precision on its own chain
            got = nf.stability_score(den, sched, x, cond, guidance_scale=1.0, inversion_guidance_scale=1.0)
            x0_32, x0_64 = loops_32_64(DDIMScheduler, cfg, steps, x, prediction_type, sched)
            back32 = loops_32_64(DDIMInverseScheduler, cfg, steps, x0_32, prediction_type, sched)[0]
            back64 = loops_32_64(DDIMInverseScheduler, cfg, steps, x0_64, prediction_type, sched)[1]
            d32, d64 = ref.cosine_similarity(x, back32), ref.cosine_similarity(x.double(), back64)
    assert_within_diffusers_error(got, d32, d64, f"{direction} {prediction_type} clip={clip}")


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_gradient_through_zero_alpha_moves_is_finite(prediction_type):
    """Algorithm 2's gradient flows through the ᾱ = 0 moves (v: both ends of F; epsilon: the inversion's end)."""
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    if prediction_type == "v_prediction":
        sched = DDIMSchedule.from_config(config(prediction_type, False), 2)
        den = gmm(sched, prediction_type, torch.float32)
        s, g = nf.stability_grad(den, sched, noise, gmm_condition(den), guidance_scale=1.0, inversion_guidance_scale=1.0)
        assert torch.isfinite(s).all()
    else:  # inversion only: the gradient of ‖I(x₀)‖² through the move onto ᾱ = 0
        sched = DDIMSchedule.from_config(config(prediction_type, False), 0, num_inversion_steps=2)
        den = gmm(sched, prediction_type, torch.float32)
        x0 = noise.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(nf.invert(den, sched, x0, gmm_condition(den), 1.0).square().sum(), x0)
    assert torch.isfinite(g).all() and float(g.abs().max()) > 0


# --- ops.ddim_move at ᾱ = 0: values against diffusers' step, gradients ----------------------------------

# (prediction_type, clip, direction): the single ᾱ = 0 move of each kind diffusers steps to a finite result
MOVES = [("v_prediction", False, "denoise"), ("v_prediction", True, "denoise"), ("v_prediction", False, "invert"),
         ("epsilon", False, "invert"), ("epsilon", True, "invert"),
         ("epsilon", True, "denoise")]  # allowed by the op (diffusers' clamp of ±inf), refused by the schedule


@pytest.mark.parametrize("prediction_type, clip, direction", MOVES, ids=[f"{p[:3]}-clip{c}-{d}" for p, c, d in MOVES])
def test_ddim_move_at_zero_alpha_matches_diffusers_step(prediction_type, clip, direction):
    cfg = config(prediction_type, clip)
    g = torch.Generator().manual_seed(5)
    x, m = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)  # m: an imperfect model
    steps = 4
    if direction == "denoise":
        s = DDIMScheduler.from_config(cfg)
        s.set_timesteps(steps)
        t, a_from, a_to = 999, 0.0, float(s.alphas_cumprod[999 - 1000 // steps])
    else:
        s = DDIMInverseScheduler.from_config(cfg)
        s.set_timesteps(steps)
        t, a_from, a_to = 999, float(s.alphas_cumprod[999 - 1000 // steps]), 0.0
    d32 = s.step(m, t, x).prev_sample
    d64 = s.step(m.double(), t, x.double()).prev_sample
    kw = dict(prediction_type=prediction_type, clip_sample_range=1.0 if clip else None)
    got = ops.ddim_move(x, m, a_from, a_to, **kw)
    assert_within_diffusers_error(got, d32, d64, "ddim_move")
    torch.testing.assert_close(got, ref.ddim_move(x, m, a_from, a_to, **kw), rtol=4 * F32_EPS, atol=4 * F32_EPS)

    # gradients: finite, equal to the reference's autograd, and (float64) to finite differences
    for impl in (ops.ddim_move, ref.ddim_move):
        xg, mg, mu = (v.clone().requires_grad_(True) for v in (x, m, torch.randn(2, 4, 8, 8, generator=g)))
        out = impl(xg, mg, a_from, a_to, model_out_uncond=mu, guidance_scale=2.5, **kw)
        grads = torch.autograd.grad((out * d32).sum(), (xg, mg, mu))
        assert all(torch.isfinite(gr).all() for gr in grads), impl
    small = [v[:1, :1, :2, :3].double().clone().requires_grad_(True) for v in (x, m)]
    assert torch.autograd.gradcheck(lambda a, b: ops.ddim_move(a, b, a_from, a_to, **kw), small)


def test_ddim_move_refuses_epsilon_from_zero_alpha_without_clipping():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"alpha_from must be in \(0, 1\]; got 0.0 \(epsilon prediction without "
                                         r"clipping divides by √ᾱ_from"):
        ops.ddim_move(x, x, 0.0, 0.5)
    with pytest.raises(ValueError, match=r"alpha_from must be in \(0, 1\]; got \[0.0\]"):
        ops.ddim_move(x, x, torch.tensor([0.3, 0.0]), 0.5)
    with pytest.raises(ValueError, match=r"alpha_to must be in \[0, 1\]; got -0.1"):
        ops.ddim_move(x, x, 0.5, -0.1, prediction_type="v_prediction")
    # ᾱ = 0 elsewhere is fine: v prediction from it, anything onto it, epsilon from it with clipping
    assert torch.isfinite(ops.ddim_move(x, 2 * x, 0.0, 0.5, prediction_type="v_prediction")).all()
    assert torch.equal(ops.ddim_move(x, 2 * x, 0.5, 0.0), 2 * x)  # epsilon onto ᾱ = 0: x' = ε̂ = m
    assert torch.isfinite(ops.ddim_move(x, 2 * x, 0.0, 0.5, clip_sample_range=1.0)).all()


# --- Engine: a saved zero-SNR v-prediction pipeline ------------------------------------------------------


def test_engine_scores_zero_snr_pipeline_like_diffusers(tmp_path):
    """Engine.score on a tiny SDXL folder whose scheduler is zero-SNR + trailing + v: finite, and equal to the
    stock pipeline (DDIM, CFG) followed by a DDIMInverseScheduler loop, within diffusers' float32 error."""
    from noisefast.pipeline import Engine
    from noisefast.testing import tiny_sdxl_pipeline

    overrides = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}
    pipe = tiny_sdxl_pipeline(tmp_path / "zsnr", scheduler_overrides=overrides)
    engine = Engine.from_pretrained(str(tmp_path / "zsnr"), device="cpu")
    prompt, seeds, steps, w = "a red fox", [0, 1], 3, 3.0
    settings = dict(height=64, width=64, steps=steps, inversion_steps=steps, guidance_scale=w, inversion_guidance_scale=1.0)
    got = engine.score(prompt, seeds, **settings)
    assert got.shape == (2,) and torch.isfinite(got).all()
    noise = nf.noise_from_seeds(seeds, (4, 8, 8), "cpu")  # what the Engine (and diffusers) draws per seed

    def direct(p, dtype):  # stock pipeline denoising, then diffusers' inversion loop (conditional: w_i = 1)
        p = copy.deepcopy(p).to(dtype=dtype)
        p.scheduler = DDIMScheduler.from_config(p.scheduler.config)
        eps = noise.to(dtype)
        with torch.no_grad():
            x0 = p(prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=w, latents=eps, num_images_per_prompt=2,
                   output_type="latent").images
            pe, _, pooled, _ = p.encode_prompt(prompt, device="cpu", num_images_per_prompt=2,
                                               do_classifier_free_guidance=False)
            time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]], dtype=dtype).expand(2, 6)
            inv = DDIMInverseScheduler.from_config(p.scheduler.config)
            inv.set_timesteps(steps)
            x = x0
            for t in inv.timesteps:
                m = p.unet(x, t, encoder_hidden_states=pe,
                           added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
                x = inv.step(m, t, x).prev_sample
        return ref.cosine_similarity(eps, x)

    assert DDIMScheduler.from_config(pipe.scheduler.config).alphas_cumprod[-1] == 0  # really zero terminal SNR
    assert_within_diffusers_error(got, direct(pipe, torch.float32), direct(pipe, torch.float64), "Engine.score")
