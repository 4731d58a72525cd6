"""denoise / invert / transform: parity with diffusers loops and the SDXL pipeline, chunking, gradients."""

import importlib
import math

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from _tolerance import F64_SAME_OPS, unet_rel_tolerance
from noisefast.denoisers import Condition, GaussianMixtureDenoiser, UNetDenoiser
from noisefast.schedule import DDIMSchedule
from noisefast.seeds import noise_from_seeds
from noisefast.testing import SDXL_EULER_SCHEDULER_CONFIG, SDXL_SCHEDULER_CONFIG, tiny_condition

# the module, not the `noisefast.transform` function that the package exports under the same name
tf = importlib.import_module("noisefast.transform")

# ---------------------------------------------------------------- parity with diffusers' own loops


def diffusers_loop(unet, scheduler, x, cond, w):
    """The SDXL pipeline's denoising loop (or, with DDIMInverseScheduler, the usual inversion loop)."""
    cfg = w > 1
    embeds, pooled, tids = cond.prompt_embeds, cond.pooled_prompt_embeds, cond.time_ids
    if cfg:
        embeds = torch.cat([cond.negative_prompt_embeds, embeds])
        pooled = torch.cat([cond.negative_pooled_prompt_embeds, pooled])
        tids = torch.cat([tids, tids])
    traj = [x]
    for t in scheduler.timesteps:
        inp = torch.cat([x] * 2) if cfg else x
        out = unet(inp, t, encoder_hidden_states=embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": tids}, return_dict=False)[0]
        if cfg:
            out_u, out_c = out.chunk(2)
            out = out_u + w * (out_c - out_u)
        x = scheduler.step(out, t, x, return_dict=False)[0]
        traj.append(x)
    return torch.stack(traj)


def rel_err(a, b):  # per-step relative error, [S]
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().item()


@pytest.mark.parametrize("w", [1.0, 5.0], ids=["no_cfg", "cfg"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 4, 10, 50])
def test_denoise_and_invert_match_diffusers(tiny_unet_loaded, tiny_denoiser, steps, spacing, w):
    config = SDXL_SCHEDULER_CONFIG | {"timestep_spacing": spacing}
    sched = DDIMSchedule.from_config(config, steps)
    cond = tiny_condition(batch=2, seed=steps)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps))
    with torch.inference_mode():
        ddim, inv = DDIMScheduler.from_config(config), DDIMInverseScheduler.from_config(config)
        ddim.set_timesteps(steps)
        inv.set_timesteps(steps)
        ref_down = diffusers_loop(tiny_unet_loaded, ddim, noise, cond, w)
        x0, down = tf.denoise(tiny_denoiser, sched, noise, cond, w, return_intermediates=True)
        # invert from diffusers' x₀ so each loop is compared on its own
        ref_up = diffusers_loop(tiny_unet_loaded, inv, ref_down[-1], cond, w)
        xT, up = tf.invert(tiny_denoiser, sched, ref_down[-1], cond, w, return_intermediates=True)
    assert down.shape == (steps + 1, 2, 4, 8, 8) and up.shape == (steps + 1, 2, 4, 8, 8)
    assert torch.equal(down[-1], x0) and torch.equal(up[-1], xT)
    assert rel_err(down, ref_down) <= unet_rel_tolerance(w)  # step by step (and so the whole loop)
    assert rel_err(up, ref_up) <= unet_rel_tolerance(w)


def encode(pipe, prompt, height, width, cfg):
    """The Condition the SDXL pipeline builds for a prompt (both encoders, pooled, time_ids)."""
    pe, npe, ppe, nppe = pipe.encode_prompt(prompt, device=torch.device("cpu"), do_classifier_free_guidance=cfg)
    time_ids = pipe._get_add_time_ids(
        (height, width), (0, 0), (height, width), dtype=pe.dtype, text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim
    )
    return Condition(pe, ppe, time_ids, npe, nppe)


@pytest.mark.parametrize(
    "scheduler_config, steps, w",
    [
        (None, 4, 5.0),  # the tiny pipeline's DDIMScheduler (SDXL settings, no clipping), CFG
        (SDXL_EULER_SCHEDULER_CONFIG, 4, 5.0),  # DDIMScheduler.from_config(SDXL's Euler config): clips x̂₀
        (SDXL_SCHEDULER_CONFIG | {"timestep_spacing": "trailing"}, 1, 0.0),  # SDXL-Turbo style: 1 step, no CFG
    ],
)
def test_denoise_of_seed_noise_equals_the_sdxl_pipeline(tiny_sdxl, scheduler_config, steps, w):
    pipe = tiny_sdxl
    if scheduler_config is not None:
        pipe.scheduler = DDIMScheduler.from_config(scheduler_config)
    prompt, seeds, h, wd = "a red fox in the snow", [3, 11], 64, 96
    with torch.inference_mode():
        cond = encode(pipe, prompt, h, wd, cfg=w > 1)
        sched = DDIMSchedule.from_config(pipe.scheduler.config, steps)
        ours = tf.denoise(UNetDenoiser(pipe.unet), sched, noise_from_seeds(seeds, (4, h // 8, wd // 8)), cond, w)
        for i, s in enumerate(seeds):
            theirs = pipe(
                prompt, height=h, width=wd, num_inference_steps=steps, guidance_scale=w,
                generator=torch.Generator("cpu").manual_seed(s), output_type="latent",
            ).images  # raw latents: output_type="latent" skips the VAE scaling and decoding
            assert rel_err(ours[i : i + 1], theirs) <= unet_rel_tolerance(w)


# ---------------------------------------------------------------- batching, chunking, intermediates

GMM_SCHED = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG | {"set_alpha_to_one": True}, 2)


def gmm():
    return GaussianMixtureDenoiser.random((2, 4, 4), 3, GMM_SCHED, std=0.5, seed=1)


def test_chunking_and_per_sample_conditions():
    den = gmm()
    noise = torch.randn(5, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cond = den.condition(torch.randn(5, 3, dtype=torch.float64))
    whole, traj = tf.transform(den, GMM_SCHED, noise, cond, 3.0, 1.5, return_intermediates=True)
    chunked, traj2 = tf.transform(den, GMM_SCHED, noise, cond, 3.0, 1.5, max_batch=2, return_intermediates=True)
    torch.testing.assert_close(chunked, whole, **F64_SAME_OPS)
    torch.testing.assert_close(traj2, traj, **F64_SAME_OPS)
    assert traj.shape == (2 + 2 + 1, 5, 2, 4, 4) and torch.equal(traj[0], noise) and torch.equal(traj[-1], whole)
    one = tf.transform(den, GMM_SCHED, noise[3:4], cond.index(slice(3, 4)), 3.0, 1.5)
    torch.testing.assert_close(one, whole[3:4], **F64_SAME_OPS)
    # F = I∘D
    torch.testing.assert_close(
        whole, tf.invert(den, GMM_SCHED, tf.denoise(den, GMM_SCHED, noise, cond, 3.0), cond, 1.5), **F64_SAME_OPS
    )


def test_unet_chunking(tiny_denoiser):
    sched = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, 2)
    noise = torch.randn(3, 4, 8, 8)
    whole = tf.transform(tiny_denoiser, sched, noise, tiny_condition(), 5.0)
    chunked = tf.transform(tiny_denoiser, sched, noise, tiny_condition(), 5.0, max_batch=2)
    assert rel_err(chunked, whole) <= unet_rel_tolerance(5.0)


# ---------------------------------------------------------------- gradients


def test_inference_mode_without_grad_and_autograd_with():
    den = gmm()
    noise = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    out = tf.transform(den, GMM_SCHED, noise, den.condition(), 3.0)
    assert out.is_inference() and not out.requires_grad
    out = tf.transform(den, GMM_SCHED, noise.clone().requires_grad_(), den.condition(), 3.0)
    assert out.requires_grad and not out.is_inference()
    with torch.no_grad():
        assert tf.transform(den, GMM_SCHED, noise.clone().requires_grad_(), den.condition(), 3.0).is_inference()


@pytest.mark.parametrize("checkpoint", [False, True])
def test_gradient_matches_finite_differences(checkpoint):
    """float64 gradcheck of F(ε) through 2 + 2 guided moves of the analytic model (autograd vs central FD)."""
    den = gmm()
    cond = den.condition(torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64))
    noise = torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    fn = lambda e: tf.transform(den, GMM_SCHED, e, cond, 3.0, 1.5, checkpoint=checkpoint)  # noqa: E731
    # as _tolerance.GRADCHECK_F64, ×10 for the chain: 4 moves with guidance up to 3 amplify f‴ and |f| (≲ 10×)
    assert torch.autograd.gradcheck(fn, (noise,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_checkpointing_saves_one_latent_per_step_and_same_gradient():
    den = gmm()
    cond = den.condition()
    noise = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    grads, saved = {}, {}
    for ck in (False, True):
        nbytes = []

        def pack(t):
            nbytes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = tf.transform(den, GMM_SCHED, noise, cond, 3.0, checkpoint=ck)
        saved[ck] = sum(nbytes)
        (grads[ck],) = torch.autograd.grad(out.square().sum(), noise)
    torch.testing.assert_close(grads[True], grads[False], **F64_SAME_OPS)
    latent = noise.numel() * noise.element_size()
    assert saved[True] <= 4 * latent + 1024 < saved[False]  # 4 steps: one latent each (+ small index tensors)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "noise, cond, kwargs, error, match",
    [
        (torch.randn(4, 8, 8), None, {}, ValueError, r"\[B, C, H, W\].*\(4, 8, 8\)"),
        (torch.randn(2, 3, 8, 8), None, {}, ValueError, "3 channels but the denoiser expects 4"),
        (torch.zeros(2, 4, 8, 8, dtype=torch.long), None, {}, TypeError, "floating point"),
        (torch.randn(2, 4, 8, 8), tiny_condition(batch=3), {}, ValueError, "condition batch 3 does not match the latent batch 2"),
        (torch.randn(2, 4, 8, 8), None, {"guidance_scale": math.nan}, ValueError, "guidance_scale must be finite"),
        (torch.randn(2, 4, 8, 8), None, {"inversion_guidance_scale": math.inf}, ValueError, "inversion_guidance_scale"),
        (torch.randn(2, 4, 8, 8), None, {"max_batch": 0}, ValueError, "max_batch"),
        (torch.randn(2, 4, 8, 8), "prompt", {}, TypeError, "Condition"),
    ],
)
def test_bad_input(tiny_denoiser, noise, cond, kwargs, error, match):
    sched = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, 1)
    with pytest.raises(error, match=match):
        tf.transform(tiny_denoiser, sched, noise, tiny_condition() if cond is None else cond, **kwargs)


def test_bad_schedule(tiny_denoiser):
    with pytest.raises(TypeError, match="DDIMSchedule"):
        tf.denoise(tiny_denoiser, DDIMScheduler(), torch.randn(1, 4, 8, 8), tiny_condition())
