"""UNetDenoiser (diffusers calling convention), CFG batching, the analytic Gaussian-mixture denoiser."""

import copy
import math

import pytest
import torch
from _tolerance import assert_close_to_reference

from noisefast.denoisers import Condition, Denoiser, GaussianMixtureDenoiser, GuidedDenoiser, UNetDenoiser
from noisefast.denoisers.guidance import check_guidance_scale
from noisefast.schedule import DDIMSchedule
from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition, tiny_unet

# ---------------------------------------------------------------- UNetDenoiser


def test_unet_denoiser_calls_like_the_sdxl_pipeline(tiny_unet_loaded, tiny_denoiser):
    cond = tiny_condition(batch=2, seed=1)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([801, 3])
    with torch.inference_mode():
        got = tiny_denoiser(x, t, cond)
        expected = tiny_unet_loaded(
            x,
            t,
            encoder_hidden_states=cond.prompt_embeds,
            added_cond_kwargs={"text_embeds": cond.pooled_prompt_embeds, "time_ids": cond.time_ids},
            return_dict=False,
        )[0]
        # float64 latents: the UNet still runs in fp32, the output comes back in float64
        got64 = tiny_denoiser(x.double(), t, cond)
        # a batch-1 condition and a scalar timestep broadcast
        row = tiny_denoiser(x[:1], 801, cond.index(slice(0, 1)))
    assert torch.equal(got, expected)
    assert got64.dtype == torch.float64 and torch.equal(got64.float(), expected)
    # batch size changes the CPU GEMM blocking: flash rule against the UNet in float64 (tests/_tolerance.py)
    with torch.inference_mode():
        unet64 = copy.deepcopy(tiny_unet_loaded).double()
        expected64 = unet64(x[:1].double(), t[:1], encoder_hidden_states=cond.prompt_embeds[:1].double(),
                            added_cond_kwargs={"text_embeds": cond.pooled_prompt_embeds[:1].double(),
                                               "time_ids": cond.time_ids[:1].double()}, return_dict=False)[0]  # fmt: skip
    assert_close_to_reference(row, expected[:1], expected64, name="batch-1 row")
    assert isinstance(tiny_denoiser, Denoiser)
    assert (tiny_denoiser.in_channels, tiny_denoiser.sample_size) == (4, 16)
    assert tiny_denoiser.dtype == torch.float32 and tiny_denoiser.device.type == "cpu"


def test_unet_denoiser_plain_cross_attention_unet():
    unet = tiny_unet(addition_embed_type=None, projection_class_embeddings_input_dim=None)
    den = UNetDenoiser(unet)
    cond = Condition(prompt_embeds=torch.randn(1, 5, 64))
    x = torch.randn(3, 4, 8, 8)
    with torch.inference_mode():
        assert torch.equal(den(x, torch.tensor([10, 20, 30]), cond), unet(x, torch.tensor([10, 20, 30]), cond.prompt_embeds.expand(3, 5, 64)).sample)


def test_unet_denoiser_follows_the_unet_when_it_moves():
    """device/dtype are read from diffusers once per placement (each read walks every submodule), and read
    again after ``unet.to(...)``: the denoiser then feeds the UNet in its new dtype."""
    unet = tiny_unet()
    den = UNetDenoiser(unet)
    x, cond = torch.randn(1, 4, 8, 8), tiny_condition(batch=1, seed=2)
    assert den.dtype == torch.float32
    unet.to(torch.float64)
    assert den.dtype == torch.float64 and den.device == unet.device
    with torch.inference_mode():
        out = den(x, 10, cond)  # float32 in: cast to the UNet's float64, back to float32
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_unet_denoiser_bad_input(tiny_denoiser):
    cond = tiny_condition(batch=2)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\].*\(2, 3, 8, 8\)"):
        tiny_denoiser(torch.randn(2, 3, 8, 8), torch.tensor([1, 1]), cond)
    with pytest.raises(ValueError, match="timesteps must be"):
        tiny_denoiser(torch.randn(2, 4, 8, 8), torch.tensor([1, 1, 1]), cond)
    with pytest.raises(ValueError, match="cannot broadcast a condition of batch 2 to batch 3"):
        tiny_denoiser(torch.randn(3, 4, 8, 8), torch.tensor([1, 1, 1]), cond)
    with pytest.raises(ValueError, match="pooled_prompt_embeds and time_ids"):
        tiny_denoiser(torch.randn(2, 4, 8, 8), torch.tensor([1, 1]), Condition(cond.prompt_embeds))
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        UNetDenoiser(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="addition_embed_type 'text'"):
        UNetDenoiser(tiny_unet(addition_embed_type="text", encoder_hid_dim=64))
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        UNetDenoiser(tiny_unet(time_cond_proj_dim=8))


# ---------------------------------------------------------------- classifier-free guidance batching


class Recorder:
    """A denoiser that records its calls and returns prompt_embeds' first feature, broadcast."""

    in_channels = 1

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append((x.shape[0], t.tolist(), cond))
        return cond.prompt_embeds[:, :1, :1].reshape(-1, 1, 1, 1).expand(x.shape).clone()


@pytest.mark.parametrize("w, cfg", [(0.0, False), (1.0, False), (0.5, False), (1.0001, True), (7.5, True)])
def test_cfg_batches_uncond_then_cond_exactly_when_diffusers_does(w, cfg):
    pos, neg = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -2.0])
    cond = Condition(prompt_embeds=pos.reshape(2, 1, 1), negative_prompt_embeds=neg.reshape(2, 1, 1))
    rec = Recorder()
    guided = GuidedDenoiser(rec, cond, batch=2, guidance_scale=w)
    m_c, m_u = guided(torch.zeros(2, 1, 2, 2), 41)
    assert len(rec.calls) == 1  # one denoiser call either way
    rows, ts, seen = rec.calls[0]
    assert guided.cfg is cfg
    if cfg:
        assert rows == 4 and ts == [41] * 4
        assert seen.prompt_embeds.flatten().tolist() == [-1.0, -2.0, 1.0, 2.0]  # [negative; positive]
        assert m_u[:, 0, 0, 0].tolist() == [-1.0, -2.0]
    else:
        assert rows == 2 and ts == [41] * 2 and m_u is None
    assert m_c[:, 0, 0, 0].tolist() == [1.0, 2.0]


def test_cfg_without_negative_uses_zeros_and_broadcasts_batch_one():
    cond = tiny_condition(batch=1, negative=False)
    rec = Recorder()
    GuidedDenoiser(rec, cond, batch=3, guidance_scale=5.0)(torch.zeros(3, 1, 2, 2), 7)
    seen = rec.calls[0][2]
    assert seen.prompt_embeds.shape[0] == 6 and seen.pooled_prompt_embeds.shape[0] == 6
    assert torch.equal(seen.prompt_embeds[:3], torch.zeros_like(seen.prompt_embeds[:3]))
    assert torch.equal(seen.prompt_embeds[3:], cond.prompt_embeds.expand(3, -1, -1))
    assert torch.equal(seen.time_ids[:3], seen.time_ids[3:])


@pytest.mark.parametrize("bad, error", [(math.nan, ValueError), (math.inf, ValueError), (True, TypeError), ("5", TypeError)])
def test_bad_guidance(bad, error):
    with pytest.raises(error, match="guidance_scale"):
        check_guidance_scale(bad)
    with pytest.raises(error, match="guidance_scale"):
        GuidedDenoiser(Recorder(), tiny_condition(), 1, bad)


def test_guided_condition_batch_mismatch():
    with pytest.raises(ValueError, match="condition batch 2 does not match the latent batch 3"):
        GuidedDenoiser(Recorder(), tiny_condition(batch=2), 3, 5.0)


# ---------------------------------------------------------------- Gaussian-mixture denoiser

SCHED = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, 4)


def _gmm(prediction_type="epsilon", **kw):
    return GaussianMixtureDenoiser.random((2, 3, 3), 3, SCHED, std=0.4, seed=5, prediction_type=prediction_type, **kw)


def _log_density(gmm, x, t, log_weights):  # log p_t(x) [B], written independently from torch.distributions
    a = gmm.alphas_cumprod[t]
    comps = []
    for k in range(gmm.num_components):
        s = (a * gmm.stds[k] ** 2 + 1 - a).sqrt()
        normal = torch.distributions.Normal(a.sqrt() * gmm.means[k], s)
        comps.append(log_weights[k] + normal.log_prob(x).flatten(1).sum(1))
    return torch.logsumexp(torch.stack(comps, 1), 1)


@pytest.mark.parametrize("t", [0, 250, 999])
def test_gmm_epsilon_is_the_scaled_score(t):
    """Tweedie: ε*(x, t) = −√(1−ᾱ_t)·∇ₓ log p_t(x), with p_t the noised mixture density."""
    gmm = _gmm()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(t), requires_grad=True)
    (score,) = torch.autograd.grad(_log_density(gmm, x, t, gmm.log_weights).sum(), x)
    eps = gmm(x.detach(), torch.full((4,), t), gmm.condition())
    a = gmm.alphas_cumprod[t]
    torch.testing.assert_close(eps, -(1 - a).sqrt() * score, rtol=1e-10, atol=1e-10)


def test_gmm_v_prediction_and_class_labels():
    eps_gmm, v_gmm = _gmm(), _gmm("v_prediction")
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    t = torch.tensor([900, 400, 20])
    a = eps_gmm.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x0 = eps_gmm.x0_mean(x, t, eps_gmm.condition())
    eps = eps_gmm(x, t, eps_gmm.condition())
    torch.testing.assert_close(v_gmm(x, t, v_gmm.condition()), a.sqrt() * eps - (1 - a).sqrt() * x0)
    torch.testing.assert_close(x, a.sqrt() * x0 + (1 - a).sqrt() * eps)  # x_t = √a·x̂₀ + √(1−a)·ε̂
    # a hard label is the single-component model of that component
    single = GaussianMixtureDenoiser(eps_gmm.means[1:2], 0.4, SCHED)
    torch.testing.assert_close(eps_gmm(x, t, eps_gmm.condition(labels=[1])), single(x, t, single.condition()))
    # logits that favour a component move x̂₀ toward its mean
    toward = eps_gmm.x0_mean(x, t, eps_gmm.condition(torch.tensor([[0.0, 30.0, 0.0]])))
    assert ((toward - eps_gmm.means[1]).norm() < (x0 - eps_gmm.means[1]).norm()).item()


def test_gmm_gradcheck():
    gmm = _gmm()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 1, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([700, 50])
    assert torch.autograd.gradcheck(lambda x, l: gmm(x, t, Condition(l)), (x, logits))


def test_gmm_bad_input():
    gmm = _gmm()
    with pytest.raises(ValueError, match=r"latent must be \[B, 2, 3, 3\]"):
        gmm(torch.randn(1, 2, 4, 3, dtype=torch.float64), torch.tensor([1]), gmm.condition())
    with pytest.raises(ValueError, match=r"class logits \[B, 1, 3\]"):
        gmm(torch.randn(1, 2, 3, 3, dtype=torch.float64), torch.tensor([1]), tiny_condition())
    with pytest.raises(ValueError, match="condition batch 2"):
        gmm(torch.randn(3, 2, 3, 3, dtype=torch.float64), torch.tensor([1] * 3), gmm.condition(batch=2))
    with pytest.raises(ValueError, match="labels must be in"):
        gmm.condition(labels=[3])
    with pytest.raises(ValueError, match="stds must be positive"):
        GaussianMixtureDenoiser(gmm.means, 0.0, SCHED)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureDenoiser(gmm.means, 0.4, SCHED, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="means must be"):
        GaussianMixtureDenoiser(torch.randn(3, 4), 0.4, SCHED)
