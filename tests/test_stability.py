"""Inversion stability (Definition 1) and noise selection (Algorithm 1)."""

import pytest
import torch
from _tolerance import magnitude_atol

from noisefast.denoisers import GaussianMixtureDenoiser
from noisefast.schedule import DDIMSchedule
from noisefast.seeds import noise_from_seeds
from noisefast.selection import Selection, SelectionInterrupted, select_noise
from noisefast.stability import stability_score
from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition
from noisefast.transform import transform

TURBO = SDXL_SCHEDULER_CONFIG | {"timestep_spacing": "trailing"}
SHAPE = (4, 8, 8)


def gmm():
    return GaussianMixtureDenoiser.random(SHAPE, 4, DDIMSchedule.from_config(TURBO, 1), std=0.5, seed=0)


def test_score_is_cosine_of_noise_and_its_transform(tiny_denoiser):
    sched = DDIMSchedule.from_config(TURBO, 2, num_inversion_steps=3)
    noise, cond = noise_from_seeds([1, 2, 3], SHAPE), tiny_condition()
    s = stability_score(tiny_denoiser, sched, noise, cond, 4.0, 1.0, max_batch=2)
    back = transform(tiny_denoiser, sched, noise, cond, 4.0, 1.0)
    expected = torch.nn.functional.cosine_similarity(noise.flatten(1), back.flatten(1), dim=1)
    assert s.shape == (3,) and s.dtype == torch.float32
    # max_batch=2 vs one batch of 3: the UNet's float32 GEMMs block differently. Magnitude model: a cosine
    # (|s| ≤ 1) after 2+3 chained moves with guidance 4 (amplification 1+4)
    torch.testing.assert_close(s, expected, rtol=0, atol=magnitude_atol(expected, steps=5, guidance=4.0))


@pytest.mark.parametrize("w", [1.0, 3.0], ids=["no_cfg", "cfg"])
def test_stability_rises_toward_one_as_steps_grow(capsys, w):
    """With the exact ε of a Gaussian mixture, D and I are discretisations of one ODE: F → identity."""
    den = gmm()
    cond = den.condition(torch.tensor([[1.0, 0.0, 0.0, -1.0]], dtype=torch.float64))
    noise = noise_from_seeds(range(8), SHAPE, dtype=torch.float64)
    curve = {}
    for n in (1, 2, 5, 10, 20, 50, 100, 200):
        sched = DDIMSchedule.from_config(TURBO, n)
        curve[n] = stability_score(den, sched, noise, cond, w).mean().item()
    with capsys.disabled():  # the measured curve goes into the test output
        print(f"\nGMM stability vs steps (trailing, guidance {w}, mean of 8 seeds): "
              + ", ".join(f"{n}: {s:.5f}" for n, s in curve.items()))
    values = list(curve.values())
    assert all(b > a for a, b in zip(values, values[1:])), curve
    assert values[0] < 0.5 and values[-1] > 0.999, curve


def test_select_noise_sorts_every_seed_by_stability():
    den, sched = gmm(), DDIMSchedule.from_config(TURBO, 3)
    cond = den.condition()
    calls = []
    sel = select_noise(den, sched, cond, seeds=[5, 9, 2, 7, 30], guidance_scale=2.0, max_batch=2,
                       progress=lambda done, total: calls.append((done, total)))
    direct = stability_score(den, sched, noise_from_seeds([5, 9, 2, 7, 30], SHAPE, dtype=torch.float64), cond, 2.0)
    by_seed = dict(zip([5, 9, 2, 7, 30], direct.tolist()))
    assert sorted(sel.seeds) == [2, 5, 7, 9, 30] and sel.complete and sel.total == 5 and sel.as_dict()["requested"] == 5
    assert sel.scores.tolist() == sorted(sel.scores.tolist(), reverse=True)
    # select_noise draws and scores in float32; `direct` is the float64 run: magnitude model, eps32, 3+3 moves,
    # guidance 2
    tol = magnitude_atol(direct, dtype=torch.float32, steps=6, guidance=2.0)
    assert sel.scores.tolist() == pytest.approx([by_seed[s] for s in sel.seeds], abs=tol)
    assert sel.best_seed == max(by_seed, key=by_seed.get) and sel.worst_seed == min(by_seed, key=by_seed.get)
    assert torch.equal(sel.best_noise, noise_from_seeds([sel.best_seed], SHAPE, dtype=torch.float64))
    assert torch.equal(sel.worst_noise, noise_from_seeds([sel.worst_seed], SHAPE, dtype=torch.float64))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert sel.top(2) == sel.seeds[:2] and sel.score_of(sel.best_seed) == sel.best_score
    report = sel.as_dict()
    assert report["best_seed"] == sel.best_seed and len(report["scores"]) == 5


def test_select_noise_k_and_defaults(tiny_denoiser):
    sel = select_noise(tiny_denoiser, DDIMSchedule.from_config(TURBO, 1), tiny_condition(), k=3, guidance_scale=0.0)
    assert isinstance(sel, Selection) and sorted(sel.seeds) == [0, 1, 2]
    assert sel.best_noise.shape == (1, 4, 16, 16)  # default shape: (in_channels, sample_size, sample_size)


def test_interrupt_keeps_the_finished_chunks():
    den, sched = gmm(), DDIMSchedule.from_config(TURBO, 2)

    def progress(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(SelectionInterrupted) as info:
        select_noise(den, sched, den.condition(), seeds=range(10), guidance_scale=1.0, max_batch=2, progress=progress)
    partial = info.value.result
    assert isinstance(info.value, KeyboardInterrupt)
    assert sorted(partial.seeds) == [0, 1, 2, 3] and not partial.complete and partial.total == 10


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"seeds": [1], "k": 1}, ValueError, "seeds or k"),
        ({"k": 0}, ValueError, "k must be a positive int"),
        ({"seeds": [-3]}, ValueError, "out of range"),
        ({"seeds": [1], "cond": "batch2"}, ValueError, "cond must have batch 1"),
        ({"seeds": [1], "shape": (4, 8)}, ValueError, "4, 8\\) channels|\\[B, C, H, W\\]"),
        ({"seeds": [1], "guidance_scale": float("nan")}, ValueError, "finite"),
        ({"seeds": [1], "max_batch": -1}, ValueError, "max_batch"),
    ],
)
def test_select_noise_bad_input(tiny_denoiser, kwargs, error, match):
    cond = tiny_condition(batch=2) if kwargs.pop("cond", None) == "batch2" else tiny_condition()
    sched = DDIMSchedule.from_config(TURBO, 1)
    with pytest.raises(error, match=match):
        select_noise(tiny_denoiser, sched, cond, **kwargs)
