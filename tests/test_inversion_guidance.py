"""Inversion guidance: m = m_u + w·(m_c − m_u) for every w (0 → unconditional, 1 → conditional), while the
denoising guidance keeps diffusers' pipeline rule (w ≤ 1 → conditional only).

The reference is written out here: one UNet call on the concatenated ``[uncond; cond]`` batch, the mix by
hand, `noisefast.ref.ddim_move`. Everything runs in float64 (a float64 tiny UNet), so the only differences
are the order of float64 roundings (w = 1: m_u + (m_c − m_u) against m_c; a batch of B against 2B).
"""

import pytest
import torch

import noisefast as nf
from noisefast import ref
from noisefast.denoisers.guidance import Guidance, describe_inversion_guidance, needs_negative
from noisefast.denoisers.unet import UNetDenoiser
from noisefast.schedule import DDIMSchedule
from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition, tiny_unet

SCHED = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, 2)  # leading, ᾱ_0 final alpha, no clipping
COND = tiny_condition(batch=2, seed=1).to(dtype=torch.float64)  # with a random negative half
SCALES = [0.0, 0.5, 1.0, 1.5, 5.0]
TOL = dict(rtol=1e-9, atol=1e-11)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=0).double()


class Counting:
    """A denoiser that records every call: (rows, prompt_embeds) — which halves ran."""

    def __init__(self, den):
        self.den, self.calls = den, []

    def __call__(self, x, t, cond):
        self.calls.append((x.shape[0], cond.prompt_embeds.clone()))
        return self.den(x, t, cond)


def model(unet, x, t, halves):
    """The raw UNet output for the given halves ("u", "c" or "uc" = one call on [uncond; cond])."""
    parts = {"u": (COND.negative_prompt_embeds, COND.negative_pooled_prompt_embeds),
             "c": (COND.prompt_embeds, COND.pooled_prompt_embeds)}  # fmt: skip
    embeds = torch.cat([parts[h][0] for h in halves])
    pooled = torch.cat([parts[h][1] for h in halves])
    time_ids = torch.cat([COND.time_ids] * len(halves))
    xs = torch.cat([x] * len(halves))
    t = torch.full((xs.shape[0],), t)
    return unet(xs, t, encoder_hidden_states=embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample


def move(x, m, mv):
    return ref.ddim_move(x, m, mv.alpha_from, mv.alpha_to, prediction_type=SCHED.prediction_type,
                         clip_sample_range=SCHED.clip_sample_range)  # fmt: skip


def direct_invert(unet, x, w):
    """The lab code's inversion: always the [uncond; cond] pair, m = m_u + w·(m_c − m_u)."""
    for mv in SCHED.invert_moves:
        m_u, m_c = model(unet, x, mv.t, "uc").chunk(2)
        x = move(x, m_u + w * (m_c - m_u), mv)
    return x


def direct_denoise(unet, x, w):
    """diffusers' pipeline: the pair and the mix when w > 1, else the conditional half alone."""
    for mv in SCHED.denoise_moves:
        if w > 1:
            m_u, m_c = model(unet, x, mv.t, "uc").chunk(2)
            m = m_u + w * (m_c - m_u)
        else:
            m = model(unet, x, mv.t, "c")
        x = move(x, m, mv)
    return x


def latents(seed):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_halves(calls, steps, w, rule):
    """One call per step, on the halves the rule says (uncond/cond: 2 rows; both: 4 rows, negative first)."""
    assert len(calls) == steps
    g = Guidance.of(w, rule)
    for rows, embeds in calls:
        if g.cond and g.uncond:
            assert rows == 4 and torch.equal(embeds, torch.cat([COND.negative_prompt_embeds, COND.prompt_embeds]))
        else:
            assert rows == 2 and torch.equal(embeds, COND.prompt_embeds if g.cond else COND.negative_prompt_embeds)


@pytest.mark.parametrize("w", SCALES)
def test_invert_is_the_guided_mix_for_every_scale(unet, w):
    x0 = latents(0)
    den = Counting(UNetDenoiser(unet))
    with torch.no_grad():
        got = nf.invert(den, SCHED, x0, COND, guidance_scale=w)
        want = direct_invert(unet, x0, w)
    torch.testing.assert_close(got, want, **TOL)
    # w = 0 / w = 1: one call per step on the unconditional / conditional half only; else the pair
    assert_halves(den.calls, SCHED.num_inversion_steps, w, "mix")
    assert [r for r, _ in den.calls] == [2 if w in (0.0, 1.0) else 4] * SCHED.num_inversion_steps


def test_unconditional_and_conditional_inversions_differ(unet):
    """w = 0 and w = 1 are different inversions (the test above could not tell them apart otherwise)."""
    x0 = latents(0)
    with torch.no_grad():
        a, b = (nf.invert(UNetDenoiser(unet), SCHED, x0, COND, guidance_scale=w) for w in (0.0, 1.0))
    assert float((a - b).abs().max()) > 1e-3


@pytest.mark.parametrize("w_inv", SCALES)
def test_stability_score_inverts_with_the_mix(unet, w_inv):
    noise = latents(1)
    den = Counting(UNetDenoiser(unet))
    with torch.no_grad():
        got = nf.stability_score(den, SCHED, noise, COND, guidance_scale=0.5, inversion_guidance_scale=w_inv)
        want = ref.cosine_similarity(noise, direct_invert(unet, direct_denoise(unet, noise, 0.5), w_inv))
    torch.testing.assert_close(got, want, **TOL)
    assert_halves(den.calls[: SCHED.num_steps], SCHED.num_steps, 0.5, "diffusers")  # denoising: conditional only
    assert_halves(den.calls[SCHED.num_steps :], SCHED.num_inversion_steps, w_inv, "mix")


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 5.0])
def test_denoising_still_follows_diffusers(unet, w):
    noise = latents(2)
    den = Counting(UNetDenoiser(unet))
    with torch.no_grad():
        got = nf.denoise(den, SCHED, noise, COND, guidance_scale=w)
        want = direct_denoise(unet, noise, w)
    torch.testing.assert_close(got, want, **TOL)
    assert_halves(den.calls, SCHED.num_steps, w, "diffusers")
    assert [r for r, _ in den.calls] == [4 if w > 1 else 2] * SCHED.num_steps


def test_optimize_noise_scores_with_the_inversion_mix(unet):
    noise = latents(3)
    w_inv = 0.0  # Z-Sampling's default: the unconditional inversion
    res = nf.optimize_noise(UNetDenoiser(unet), SCHED, noise, COND, steps=1, lr=1.0, guidance_scale=0.5,
                            inversion_guidance_scale=w_inv)  # fmt: skip
    with torch.no_grad():
        want = ref.cosine_similarity(noise, direct_invert(unet, direct_denoise(unet, noise, 0.5), w_inv))
    torch.testing.assert_close(res.history[0], want, **TOL)


def test_rules_descriptions_and_the_negative_predicate():
    # the mix rule: which halves run
    assert [(Guidance.of(w, "mix").cond, Guidance.of(w, "mix").uncond) for w in (0.0, -0.0, 1.0, 0.5, -1.0)] == [
        (False, True), (False, True), (True, False), (True, True), (True, True)]
    # diffusers' rule: the pair only above 1
    assert [Guidance.of(w, "diffusers").mode for w in (0.0, 1.0, 1.0001, -3.0)] == [
        "conditional", "conditional", "guided", "conditional"]
    assert [describe_inversion_guidance(w) for w in (1, 0, 0.5, 5, -1)] == [
        "conditional", "unconditional", "guided (w=0.5)", "guided (w=5)", "guided (w=-1)"]
    # the negative half is needed by CFG denoising (> 1) and by every inversion scale but 1
    assert [needs_negative(g, i) for g, i in ((0.0, 1.0), (1.0, 1.0), (5.5, 1.0), (0.0, 0.0), (1.0, 0.5), (0.0, 2.0))] == [
        False, False, True, True, True, True]
    with pytest.raises(ValueError, match=r"guidance rule must be one of \('diffusers', 'mix'\), got 'cfg'"):
        Guidance.of(1.0, "cfg")
    with pytest.raises(ValueError, match="inversion_guidance_scale must be finite, got nan"):
        describe_inversion_guidance(float("nan"))
    with pytest.raises(TypeError, match="inversion_guidance_scale must be a real number"):
        needs_negative(1.0, "0")
