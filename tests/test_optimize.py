"""Algorithm 2 (optimize_noise): exact gradients, stability rises, flat memory, stops, interrupts, bad input."""

import math

import pytest
import torch

from _tolerance import F64_SAME_OPS
from noisefast import ops
from noisefast.denoisers import GaussianMixtureDenoiser, UNetDenoiser
from noisefast.optimize import SavedBytes, optimize_noise, stability_grad
from noisefast.schedule import DDIMSchedule
from noisefast.stability import stability_score
from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition
from noisefast.transform import transform

SCHED = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, 2, 2)  # 2 + 2 moves, no x̂₀ clipping
LATENT = (2, 4, 4)  # per-sample GMM latent (D = 32)
W = 3.0  # denoising guidance; inversion stays at 1.0, so F is far from the identity


def gmm(seed: int = 0) -> GaussianMixtureDenoiser:
    """Overlapping, narrow components: F(ε) = I(D(ε)) is clearly nonlinear and not the identity."""
    return GaussianMixtureDenoiser.random(LATENT, 4, SCHED, std=0.3, spread=0.3, seed=seed)


def gmm_cond(den):
    return den.condition(torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=torch.float64))


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def loss(den, noise, cond, **kw):  # L(ε) = Σ_b (1 − s_b(ε)), float64
    with torch.no_grad():
        return float((1 - stability_score(den, SCHED, noise, cond, W, **kw)).sum())


# ---------------------------------------------------------------- gradient


@pytest.mark.parametrize("checkpoint", [True, False])
def test_gradient_matches_central_differences(checkpoint):
    """∇L through 2 + 2 guided moves and both occurrences of ε in cos(ε, F(ε)), vs central FD in float64."""
    den = gmm()
    cond = gmm_cond(den)
    noise = randn(3, *LATENT, seed=1)
    s, g = stability_grad(den, SCHED, noise, cond, W, checkpoint=checkpoint)
    torch.testing.assert_close(s, stability_score(den, SCHED, noise, cond, W), rtol=0, atol=1e-14)
    h = 1e-5
    for k in range(3):
        d = randn(*noise.shape, seed=100 + k)
        fd = (loss(den, noise + h * d, cond) - loss(den, noise - h * d, cond)) / (2 * h)
        exact = float((g * d).sum())
        # central differences in float64: truncation h²·|L‴|/6 and rounding eps64·|L|/h, both ≲ 1e-9 relative
        # for this smooth loss at h = 1e-5; 1e-5 leaves room for the unknown third derivative, far below the
        # O(1) error of a wrong gradient (e.g. the dropped first argument below)
        assert abs(fd - exact) <= 1e-5 * abs(exact), (k, fd, exact)
    # the cosine's first argument matters: dropping it gives a different gradient
    x = noise.clone().requires_grad_()
    (g_f_only,) = torch.autograd.grad((1 - ops.cosine_similarity(noise, transform(den, SCHED, x, cond, W))).sum(), x)
    assert (g - g_f_only).norm() > 0.1 * g.norm()


@pytest.mark.parametrize("nesterov", [False, True])
def test_updates_are_momentum_steps_along_the_gradient(nesterov):
    """ε₁ = ε₀ − lr·(1+μ·[nesterov])·g₀;  ε₂ = ε₁ − lr·(v₂ or g₁ + μ·v₂),  v₂ = μ·g₀ + g₁."""
    den = gmm()
    cond = gmm_cond(den)
    e0 = randn(2, *LATENT, seed=2)
    lr, mu = 0.5, 0.5
    _, g0 = stability_grad(den, SCHED, e0, cond, W)
    e1 = e0 - lr * ((1 + mu) * g0 if nesterov else g0)
    _, g1 = stability_grad(den, SCHED, e1, cond, W)
    v2 = mu * g0 + g1
    e2 = e1 - lr * (g1 + mu * v2 if nesterov else v2)
    res = optimize_noise(den, SCHED, e0, cond, steps=2, lr=lr, momentum=mu, nesterov=nesterov, guidance_scale=W)
    torch.testing.assert_close(res.noise, e2, **F64_SAME_OPS)
    assert res.steps_run == 2 and res.history.shape == (3, 2) and res.stop_reason == "steps"
    torch.testing.assert_close(res.history[-1], stability_score(den, SCHED, e2, cond, W), rtol=0, atol=1e-14)


# ---------------------------------------------------------------- stability rises


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stability_rises_on_the_gaussian_mixture(seed):
    den = gmm(seed)
    cond = gmm_cond(den)
    noise = randn(4, *LATENT, seed=10 + seed)
    res = optimize_noise(den, SCHED, noise, cond, steps=20, lr=10.0, guidance_scale=W)
    print(f"\nGMM seed {seed}: stability per step [steps+1, B]\n{res.history.numpy().round(4)}")
    start, best = res.history[0], res.best_score
    unstable = start < 0.99
    assert unstable.sum() >= 2  # the test is not vacuous
    assert bool((best[unstable] > start[unstable] + 0.05).all()), (start, best)
    assert bool((best >= start).all()) and bool((res.history.max(0).values == best).all())
    torch.testing.assert_close(stability_score(den, SCHED, res.best_noise, cond, W), best, rtol=0, atol=F64_SAME_OPS["atol"])


def test_stability_rises_on_the_tiny_sdxl_unet(tiny_denoiser):
    """Three seeds (one batch; samples are independent), CFG 5.5, 2 + 2 moves, the paper's lr and momentum."""
    cond = tiny_condition()
    noise = torch.cat([randn(1, 4, 8, 8, seed=s, dtype=torch.float32) for s in (0, 1, 2)])
    res = optimize_noise(tiny_denoiser, SCHED, noise, cond, steps=3, lr=100.0, momentum=0.5, guidance_scale=5.5)
    print(f"\ntiny SDXL UNet, seeds 0, 1, 2: stability per step\n{res.history.numpy().round(5)}")
    assert res.history.dtype == torch.float32 and res.history.shape == (4, 3)
    assert bool((res.history[-1] > res.history[0] + 5e-3).all())
    assert bool((res.history.diff(dim=0) > 0).all())  # monotone at this step size


# ---------------------------------------------------------------- memory


def saved_bytes(den, steps: int, checkpoint: bool) -> int:
    """Bytes saved for backward by the graph of s(ε), N + N moves without CFG, [1, 4, 8, 8] float32 noise."""
    sched = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, steps, steps)
    noise = randn(1, 4, 8, 8, dtype=torch.float32).requires_grad_()
    with SavedBytes() as counter:
        stability_score(den, sched, noise, tiny_condition(), 0.0, checkpoint=checkpoint)
    return counter.total


def test_saved_bytes_stay_flat_with_checkpointing_and_grow_without(tiny_denoiser):
    """2N UNet calls for N steps: checkpointed, each keeps only its input latent; plain, whole activations."""
    latent = 4 * 8 * 8 * 4  # one [1, 4, 8, 8] float32 latent
    ck = {n: saved_bytes(tiny_denoiser, n, True) for n in (1, 4, 16)}
    plain = {n: saved_bytes(tiny_denoiser, n, False) for n in (1, 4)}
    print(f"\nsaved bytes: checkpointed {ck}, plain {plain}, latent {latent}")
    for lo, hi in ((1, 4), (4, 16)):
        per_move = (ck[hi] - ck[lo]) / (2 * (hi - lo))
        assert per_move <= latent + 64, (lo, hi, per_move)  # one latent per UNet call (+ scalars at most)
    assert ck[16] < 40 * latent
    plain_per_move = (plain[4] - plain[1]) / 6
    assert plain_per_move > 100 * latent  # a whole UNet's activations per call
    assert ck[4] * 4 * 2 <= plain[4]  # ≤ 1/(2N) of plain for 2N = 8 calls
    # optimize_noise checkpoints by default: at most the graph above plus one call's activations, recomputed
    # in backward, are alive at once (plain[1] holds two calls' activations)
    sched = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, 4, 4)
    peak = {}
    for checkpoint in (True, False):
        with SavedBytes() as counter:
            optimize_noise(tiny_denoiser, sched, randn(1, 4, 8, 8, dtype=torch.float32), tiny_condition(), 1,
                           guidance_scale=0.0, checkpoint=checkpoint)
        peak[checkpoint] = counter.peak
    print(f"peak alive in one optimize_noise iteration, 4 + 4 steps: {peak}")
    assert peak[True] <= ck[4] + plain[1] and peak[False] == plain[4]


# ---------------------------------------------------------------- independence, stops, interrupts


@pytest.mark.parametrize("target", [None, 0.97])
def test_samples_are_independent(target):
    """A batch of 2 is optimised exactly as each sample alone (also when one stops early at the target)."""
    den = gmm()
    cond = gmm_cond(den)
    noise = randn(2, *LATENT, seed=4)
    kw = dict(steps=12, lr=1.0, guidance_scale=W, grad_clip=0.5, target_stability=target)
    both = optimize_noise(den, SCHED, noise, cond, **kw)
    for b in range(2):
        alone = optimize_noise(den, SCHED, noise[b : b + 1], cond, **kw)
        torch.testing.assert_close(both.noise[b : b + 1], alone.noise, **F64_SAME_OPS)
        torch.testing.assert_close(both.best_noise[b : b + 1], alone.best_noise, **F64_SAME_OPS)
        rows = alone.history.shape[0]
        torch.testing.assert_close(both.history[:rows, b], alone.history[:, 0], **F64_SAME_OPS)


def test_early_stop_freezes_each_sample_at_the_target():
    den = gmm()
    cond = gmm_cond(den)
    noise = randn(4, *LATENT, seed=10)
    target = 0.95
    res = optimize_noise(den, SCHED, noise, cond, steps=50, lr=10.0, guidance_scale=W, target_stability=target)
    print(f"\nearly stop at {target}:\n{res.history.numpy().round(4)}")
    assert res.stop_reason == "target" and res.steps_run < 50 and res.history.shape[0] == res.steps_run + 1
    assert bool((res.history[-1] >= target).all())
    first = (res.history >= target).float().argmax(0)  # [B] first row at the target
    assert len(set(first.tolist())) > 1  # samples stopped at different steps
    for b in range(4):  # frozen from then on: score and noise unchanged
        assert bool((res.history[first[b]:, b] == res.history[first[b], b]).all())
    torch.testing.assert_close(stability_score(den, SCHED, res.noise, cond, W), res.history[-1], rtol=0, atol=F64_SAME_OPS["atol"])


def test_callback_sees_every_iteration_and_can_stop():
    den = gmm()
    cond = gmm_cond(den)
    noise = randn(2, *LATENT, seed=5)
    seen = []

    def callback(state):
        seen.append((state.step, state.score.clone(), state.noise.clone()))
        return state.step < 2

    res = optimize_noise(den, SCHED, noise, cond, steps=10, lr=1.0, guidance_scale=W, callback=callback)
    assert [k for k, _, _ in seen] == [0, 1, 2] and res.stop_reason == "callback" and not res.interrupted
    assert res.steps_run == 2 and res.history.shape == (3, 2)
    torch.testing.assert_close(torch.stack([s for _, s, _ in seen]), res.history, rtol=0, atol=0)
    torch.testing.assert_close(seen[-1][2], res.noise, rtol=0, atol=0)


class InterruptAfter:
    """A denoiser wrapper raising KeyboardInterrupt at its n-th call (a Ctrl-C inside a UNet call)."""

    def __init__(self, den, n):
        self.den, self.n, self.calls = den, n, 0

    def __getattr__(self, name):
        if name == "den":
            raise AttributeError(name)
        return getattr(self.den, name)

    def __call__(self, x, t, cond):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.den(x, t, cond)


@pytest.mark.parametrize("where", ["callback", "denoiser_forward", "denoiser_backward"])
def test_interrupt_returns_the_best_so_far(where):
    """Ctrl-C during iteration 3 (after 3 updates): the updates and the scored iterations are kept."""
    den = gmm()
    cond = gmm_cond(den)
    noise = randn(3, *LATENT, seed=6)
    kw = dict(lr=1.0, guidance_scale=W)
    trajectory = []  # ε₀ … ε₃
    ref = optimize_noise(den, SCHED, noise, cond, steps=3, callback=lambda st: trajectory.append(st.noise), **kw)
    callback = None
    if where == "callback":

        def callback(state):
            if state.step == 3:
                raise KeyboardInterrupt

    else:  # 8 calls per iteration (4 moves forward, 4 recomputed in backward): iteration 3 is calls 25 … 32
        den = InterruptAfter(den, 24 + (2 if where == "denoiser_forward" else 6))
    res = optimize_noise(den, SCHED, noise, cond, steps=10, callback=callback, **kw)
    assert res.interrupted and res.stop_reason == "interrupt" and res.steps_run == 3
    torch.testing.assert_close(res.noise, ref.noise, rtol=0, atol=0)
    rows = 4 if where == "callback" else 3  # the callback runs after iteration 3 was scored
    torch.testing.assert_close(res.history, ref.history[:rows], rtol=0, atol=1e-14)
    best = res.history.max(0)
    torch.testing.assert_close(res.best_score, best.values, rtol=0, atol=0)
    for b in range(3):  # best_noise is the noise of the best scored iteration
        torch.testing.assert_close(res.best_noise[b], trajectory[best.indices[b]][b], rtol=0, atol=0)


# ---------------------------------------------------------------- options


def test_grad_clip_bounds_each_step_and_renorm_keeps_the_gaussian_shell():
    den = gmm()
    cond = gmm_cond(den)
    noise = randn(3, *LATENT, seed=7)
    res = optimize_noise(den, SCHED, noise, cond, steps=1, lr=2.0, momentum=0.0, guidance_scale=W, grad_clip=1e-3)
    torch.testing.assert_close((res.noise - noise).flatten(1).norm(dim=1), torch.full((3,), 2e-3, dtype=torch.float64))
    res = optimize_noise(den, SCHED, noise, cond, steps=4, lr=1.0, guidance_scale=W, renorm=True)
    root_d = math.sqrt(math.prod(LATENT))
    torch.testing.assert_close(res.noise.flatten(1).norm(dim=1), torch.full((3,), root_d, dtype=torch.float64))


def test_mixed_precision_keeps_noise_velocity_and_loss_in_float32(tiny_unet_loaded):
    """A bf16 UNet (and a bf16 autocast of the fp32 one): gradients close to fp32, state in fp32, fp16 noise in/out."""
    import copy

    cond = tiny_condition()
    noise = randn(2, 4, 8, 8, seed=8, dtype=torch.float32)
    fp32 = UNetDenoiser(tiny_unet_loaded)
    _, g32 = stability_grad(fp32, SCHED, noise, cond, 5.5)
    bf16 = UNetDenoiser(copy.deepcopy(tiny_unet_loaded).to(torch.bfloat16))
    for den, kw in ((bf16, {}), (fp32, {"autocast_dtype": torch.bfloat16})):
        s, g = stability_grad(den, SCHED, noise, cond, 5.5, **kw)
        assert s.dtype == g.dtype == torch.float32
        assert float(torch.nn.functional.cosine_similarity(g.flatten(), g32.flatten(), dim=0)) > 0.9
    res = optimize_noise(bf16, SCHED, noise.half(), cond, steps=1, guidance_scale=5.5)
    assert res.noise.dtype == res.best_noise.dtype == torch.float16
    assert res.history.dtype == res.best_score.dtype == torch.float32
    assert bool(torch.isfinite(res.noise).all()) and not torch.equal(res.noise, noise.half())


def test_max_batch_gives_the_same_result():
    den = gmm()
    cond = den.condition(torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    noise = randn(3, *LATENT, seed=9)
    kw = dict(steps=3, lr=1.0, guidance_scale=W)
    whole = optimize_noise(den, SCHED, noise, cond, **kw)
    chunked = optimize_noise(den, SCHED, noise, cond, max_batch=2, **kw)
    torch.testing.assert_close(chunked.noise, whole.noise, **F64_SAME_OPS)
    torch.testing.assert_close(chunked.history, whole.history, **F64_SAME_OPS)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "noise, kwargs, error, match",
    [
        (randn(2, *LATENT).index_fill(0, torch.tensor([1]), math.nan), {}, ValueError, r"noise must be finite; samples \[1\]"),
        (randn(2, *LATENT), {"lr": 0.0}, ValueError, "lr must be finite and > 0, got 0.0"),
        (randn(2, *LATENT), {"lr": -1.0}, ValueError, "lr must be finite and > 0"),
        (randn(2, *LATENT), {"lr": math.inf}, ValueError, "lr must be finite"),
        (randn(2, *LATENT), {"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\), got 1.0"),
        (randn(2, *LATENT), {"momentum": -0.1}, ValueError, r"momentum must be in \[0, 1\)"),
        (randn(2, *LATENT), {"steps": 0}, ValueError, "steps must be ≥ 1, got 0"),
        (randn(2, *LATENT), {"steps": 2.5}, TypeError, "steps must be an int"),
        (randn(2, *LATENT), {"target_stability": 1.5}, ValueError, "target_stability"),
        (randn(2, *LATENT), {"grad_clip": 0.0}, ValueError, "grad_clip"),
        (randn(2, *LATENT), {"autocast_dtype": torch.float64}, ValueError, "autocast_dtype"),
        (randn(2, *LATENT), {"max_batch": 0}, ValueError, "max_batch"),
        (randn(2, *LATENT), {"callback": 3}, TypeError, "callback must be callable"),
        (randn(2, *LATENT), {"renorm": 2.0}, TypeError, "renorm must be a bool, got 2.0"),
        (randn(2, 3, 4, 4), {}, ValueError, r"3 channels but the denoiser expects 2: shape \(2, 3, 4, 4\)"),
        (randn(2, 2, 4), {}, ValueError, r"\[B, C, H, W\].*\(2, 2, 4\)"),
        (randn(3, *LATENT), {"cond_batch": 2}, ValueError, "condition batch 2 does not match the latent batch 3"),
    ],
)
def test_bad_input(noise, kwargs, error, match):
    den = gmm()
    cond = den.condition(batch=kwargs.pop("cond_batch", 1))
    with pytest.raises(error, match=match):
        optimize_noise(den, SCHED, noise, cond, **kwargs)
