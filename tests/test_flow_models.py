"""SD3 and FLUX.1 through the same Engine: parity with the stock pipelines, conditions, seeds, stability, the
optimisation gradient and its memory — on tiny random pipelines saved and loaded like real folders."""

import pytest
import torch

from _flow_helpers import stock_latents, stock_latents64
from _tolerance import assert_close_to_reference, magnitude_atol
from noisefast.errors import BackendUnavailableError, InputError
from noisefast.pipeline import Engine

GUIDANCE = {"sd3": 7.0, "flux-dev": 3.5, "flux-schnell": 0.0}  # SD3: CFG; FLUX.1-dev: embedded; schnell: none
SIZES = [(64, 64), (128, 64)]  # FLUX.1-dev's μ: 16 vs 32 image tokens
PROMPT = "a red fox"


@pytest.fixture(scope="module")
def engines(tiny_flow_folders):
    return {name: Engine.from_pretrained(folder) for name, folder in tiny_flow_folders.items()}


def stock_pipe(tiny_flow_folders, name):
    """A fresh stock pipeline from the folder (tests may turn it float64)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    cls = StableDiffusion3Pipeline if name == "sd3" else FluxPipeline
    pipe = cls.from_pretrained(tiny_flow_folders[name])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def settings(engine, name, h=64, w=64, steps=2, **kw):
    return engine.settings(height=h, width=w, steps=steps, inversion_steps=steps, guidance_scale=GUIDANCE[name], **kw)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(GUIDANCE))
def test_denoising_equals_the_stock_pipeline(engines, tiny_flow_folders, name, size):
    """D(ε) of a seed = the stock pipeline's output_type="latent" for that seed, within 2× diffusers' own float32
    error (flash rule against the pipeline run in float64); the σ it stepped (μ included) are the engine's."""
    engine, (h, w), seed, steps = engines[name], size, 11, 3
    s = settings(engine, name, h, w, steps)
    pipe = stock_pipe(tiny_flow_folders, name)
    ref = stock_latents(pipe, PROMPT, seed, height=h, width=w, steps=steps, guidance=GUIDANCE[name])
    assert list(engine.schedule(s).sigmas) == pipe.scheduler.sigmas.tolist()
    gen = engine.generate(PROMPT, [seed], settings=s, decode=False)
    ref64 = stock_latents64(pipe, PROMPT, seed, height=h, width=w, steps=steps, guidance=GUIDANCE[name])
    assert_close_to_reference(gen.latents, ref, ref64, name=f"{name} {h}×{w} latents")


def test_flux_schnell_guidance_is_the_pipelines_true_cfg(engines, tiny_flow_folders):
    """FLUX.1-schnell has no guidance input: a scale w > 1 runs classifier-free guidance against the negative prompt
    ("" by default), which is FluxPipeline(true_cfg_scale=w, negative_prompt="")."""
    engine, seed, w = engines["flux-schnell"], 4, 3.0
    pipe = stock_pipe(tiny_flow_folders, "flux-schnell")
    ref = stock_latents(pipe, PROMPT, seed, height=64, width=64, steps=2, guidance=0.0, true_cfg_scale=w,
                        negative_prompt="")  # fmt: skip
    gen = engine.generate(PROMPT, [seed], decode=False, height=64, width=64, steps=2, guidance_scale=w)
    ref64 = stock_latents64(pipe, PROMPT, seed, height=64, width=64, steps=2, guidance=0.0, true_cfg_scale=w)
    assert_close_to_reference(gen.latents, ref, ref64, name="flux-schnell true CFG")


def test_dynamic_shift_follows_the_resolution(engines):
    """FLUX.1-dev's μ = calculate_shift(image tokens) moves its σ with the size; schnell's static shift does not."""
    dev, schnell = engines["flux-dev"], engines["flux-schnell"]
    a, b = (dev.schedule(settings(dev, "flux-dev", h, w)) for h, w in SIZES)
    assert a.mu != b.mu and a.sigmas != b.sigmas
    a, b = (schnell.schedule(settings(schnell, "flux-schnell", h, w)) for h, w in SIZES)
    assert a.mu is None and a.sigmas == b.sigmas == (1.0, 0.5, 0.0)


def test_sd3_dynamic_shifting_uses_the_pipelines_mu(tiny_flow_folders, engines):
    """An SD3 scheduler with use_dynamic_shifting: μ from (h/p)·(w/p) patches, as StableDiffusion3Pipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from noisefast.architectures import FlowArchitecture

    pipe = stock_pipe(tiny_flow_folders, "sd3")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=True)
    pipe(PROMPT, height=128, width=64, num_inference_steps=3, guidance_scale=1.0, output_type="latent")
    arch = FlowArchitecture("sd3", pipe.transformer, dict(pipe.scheduler.config), pipe.vae_scale_factor)
    assert list(arch.schedule(3, 3, 128, 64).sigmas) == pipe.scheduler.sigmas.tolist()


def test_conditions_are_the_pipelines_encodings(engines, tiny_flow_folders):
    sd3, dev = engines["sd3"], engines["flux-dev"]
    cond = sd3.encode(PROMPT, "blurry", settings(sd3, "sd3"))
    # under no_grad, as the pipeline's __call__ encodes (T5's CPU kernels round differently with autograd on)
    with torch.no_grad():
        pe, npe, pooled, npooled = stock_pipe(tiny_flow_folders, "sd3").encode_prompt(
            PROMPT, None, None, device="cpu", negative_prompt="blurry")  # fmt: skip
        flux = stock_pipe(tiny_flow_folders, "flux-dev")
        fpe, fpooled, _ = flux.encode_prompt(PROMPT, None, device="cpu")
        empty = flux.encode_prompt("", None, device="cpu")[0]
    for mine, ref in ((cond.prompt_embeds, pe), (cond.negative_prompt_embeds, npe), (cond.pooled_prompt_embeds, pooled),
                      (cond.negative_pooled_prompt_embeds, npooled)):  # fmt: skip
        torch.testing.assert_close(mine, ref, rtol=0, atol=0)
    assert cond.prompt_embeds.shape[1] == 77 + 256  # CLIP ‖ T5, padded to the pipeline's lengths: prompts share batches
    cond = dev.condition(PROMPT, settings=settings(dev, "flux-dev"))
    torch.testing.assert_close(cond.prompt_embeds, fpe, rtol=0, atol=0)
    torch.testing.assert_close(cond.pooled_prompt_embeds, fpooled, rtol=0, atol=0)
    assert cond.negative_prompt_embeds is None and cond.guidance.tolist() == [3.5]  # embedded, no CFG half
    assert dev.guidance_scales(settings(dev, "flux-dev")) == (1.0, 1.0)
    # an inversion mix w_i ≠ 1 needs the unconditional half: FLUX's is the (empty) negative prompt, encoded alike
    neg = dev.condition(PROMPT, settings=settings(dev, "flux-dev", inversion_guidance_scale=0.0))
    torch.testing.assert_close(neg.negative_prompt_embeds, empty, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sd3", "flux-dev"])
def test_seed_noise_is_what_the_pipeline_draws(engines, tiny_flow_folders, name):
    """SD3: randn [1, C, h, w]; FLUX: the same draw, then packed 2×2 by the pipeline — bit for bit."""
    engine, pipe = engines[name], stock_pipe(tiny_flow_folders, name)
    s = settings(engine, name, 128, 64)
    mine = engine.noise([5, 9], s)
    C, h, w = engine.latent_shape(s)
    for i, seed in enumerate((5, 9)):
        got = pipe.prepare_latents(1, C, 128, 64, torch.float32, "cpu", torch.Generator("cpu").manual_seed(seed))
        if name == "sd3":
            assert torch.equal(mine[i : i + 1], got)
        else:
            assert torch.equal(pipe._pack_latents(mine[i : i + 1], 1, C, h, w), got[0])


@pytest.mark.parametrize("name", list(GUIDANCE))
def test_stability_scores_and_prompts_sharing_batches(engines, name):
    """Scores of the tiny models: finite cosines, not all 1 (I∘D is not the identity); two prompts' rows packed
    into shared transformer batches score as each prompt alone (up to float32 batch rounding)."""
    engine = engines[name]
    s = settings(engine, name, 32, 32, batch_size=3)
    sels = engine.select_many(["a red fox", "a blue car"], seeds=range(2), settings=s)  # 4 rows, batches of 3: mixed
    for sel, prompt in zip(sels, ["a red fox", "a blue car"]):
        alone = engine.score(prompt, list(sel.seeds), settings=s)
        assert torch.isfinite(alone).all() and (alone.abs() <= 1).all() and (alone < 1 - 1e-6).all()
        atol = magnitude_atol(1.0, dtype=torch.float32, steps=2 * s.steps, guidance=GUIDANCE[name])
        torch.testing.assert_close(sel.scores, alone, rtol=0, atol=atol)
        assert sel.best_score == sel.scores.max()


def _float64_parts(engine, name, s):
    """(float64 twin of the engine's denoiser, its schedule, the float64 condition, w_d)."""
    import copy

    from noisefast.denoisers.flow import FluxDenoiser, SD3Denoiser

    den64 = (SD3Denoiser if name == "sd3" else FluxDenoiser)(copy.deepcopy(engine.model.arch.transformer).double())
    cond = engine.condition(PROMPT, settings=s).to(dtype=torch.float64)
    return den64, engine.schedule(s), cond, engine.guidance_scales(s)[0]


@pytest.mark.parametrize("name", ["sd3", "flux-dev"])
def test_optimisation_gradient_matches_central_differences(engines, name):
    """∇(1 − s) through every transformer call of the checkpointed chain, vs central differences in float64."""
    from noisefast.optimize import stability_grad
    from noisefast.stability import stability_score

    engine = engines[name]
    s = settings(engine, name, 32, 32)
    den, sched, cond, w = _float64_parts(engine, name, s)
    noise = engine.noise([3], s).double()
    score, g = stability_grad(den, sched, noise, cond, w, checkpoint=True)

    def loss(x):
        with torch.no_grad():
            return float((1 - stability_score(den, sched, x, cond, w)).sum())

    # Central differences err by truncation h²·|L‴|/6 and by the loss's rounding noise δL/h. The float64 models are
    # not float64 throughout: diffusers' rotary embedding (FLUX) computes q, k in float32 (apply_rotary_emb casts
    # x.float()), so δL ≈ 1e-12 here (measured: the FD error grows as h shrinks below 1e-4), and h = 1e-3 keeps δL/h
    # ≈ 1e-9 ≈ 5e-6 relative; 1e-4 leaves room for the unknown third derivative and is far below the O(1) error of
    # a wrong gradient (e.g. one missing a transformer call or the cosine's first argument).
    h = 1e-3
    for k in range(2):
        d = torch.randn(noise.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + k))
        fd = (loss(noise + h * d) - loss(noise - h * d)) / (2 * h)
        exact = float((g * d).sum())
        assert abs(fd - exact) <= 1e-4 * abs(exact), (k, fd, exact)


def test_optimisation_memory_is_flat_in_the_number_of_steps(engines):
    """Checkpointed, each transformer call keeps only the latent entering it: saved bytes grow by one latent per move."""
    from noisefast.optimize import SavedBytes
    from noisefast.stability import stability_score

    engine = engines["flux-dev"]
    saved = {}
    for n in (1, 4):
        s = settings(engine, "flux-dev", 32, 32, steps=n)
        noise = engine.noise([0], s).requires_grad_()
        cond = engine.condition(PROMPT, settings=s)
        with SavedBytes() as counter:
            stability_score(engine.den, engine.schedule(s), noise, cond, 1.0, checkpoint=True)
        saved[n] = counter.total
    latent = noise.numel() * noise.element_size()
    per_move = (saved[4] - saved[1]) / (2 * 3)
    assert per_move <= latent + 64, (saved, latent)


def test_engine_optimize_raises_stability(engines):
    engine = engines["flux-schnell"]
    opt = engine.optimize(PROMPT, seeds=[2], iterations=3, lr=10.0, settings=settings(engine, "flux-schnell", 32, 32))
    h = opt.result.history
    assert h.shape[0] == 4 and float(h[-1].max()) > float(h[0].max())


def test_families_defaults_and_limits(engines, tiny_flow_folders, tmp_path):
    d = {name: (e.kind, e.defaults.family, e.defaults.steps, e.defaults.guidance_scale) for name, e in engines.items()}
    assert d == {"sd3": ("sd3", "sd3", 28, 7.0), "flux-dev": ("flux", "flux-dev", 28, 3.5),
                 "flux-schnell": ("flux", "flux-schnell", 4, 0.0)}  # fmt: skip
    desc = engines["flux-dev"].describe()
    assert (desc["sampler"], desc["guidance"]) == ("Euler (flow matching)", "embedded")
    turbo = tmp_path / "tiny-sd3.5-large-turbo"
    turbo.symlink_to(tiny_flow_folders["sd3"])
    t = Engine.from_pretrained(turbo)
    assert (t.defaults.family, t.defaults.steps, t.defaults.guidance_scale) == ("sd3-turbo", 4, 0.0)
    with pytest.raises(InputError, match="does not fit a SD3 pipeline"):
        Engine.from_pretrained(tiny_flow_folders["sd3"], family="sdxl")
    with pytest.raises(InputError, match="guidance embedding"):
        Engine.from_pretrained(tiny_flow_folders["flux-schnell"], family="flux-dev")
    with pytest.raises(InputError, match="multiple of 16"):
        engines["flux-dev"].settings(height=72)
    with pytest.raises(InputError, match=r"height must be in \[1, 1536\]"):  # SD3's position table: 96 patches
        engines["sd3"].settings(height=2048)
    with pytest.raises(BackendUnavailableError, match="UNet2DConditionModel's interface"):
        Engine.from_pretrained(tiny_flow_folders["flux-schnell"], backend="compile")
