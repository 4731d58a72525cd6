"""GraphedScorer: refuses plainly without CUDA, its eager fallback (same buffers and chunking) scores what
stability_score scores, and on a GPU the captured graph does too."""

import pytest
import torch

from noisefast.denoisers.unet import UNetDenoiser
from noisefast.graphs import GraphedScorer, GraphUnavailable, unavailable_reason
from noisefast.schedule import DDIMSchedule
from noisefast.seeds import noise_from_seeds
from noisefast.stability import stability_score
from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition, tiny_unet

HAS_CUDA = torch.cuda.is_available()
SHAPE = (4, 16, 16)
TOL = 16 * torch.finfo(torch.float32).eps * 4  # error model: 16 ulps per UNet call (other batch sizes round differently)


@pytest.fixture(scope="module")
def parts():
    den = UNetDenoiser(tiny_unet())
    return den, DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, 2, 2), tiny_condition()


def _reference(den, sched, noise, cond, w=5.0):
    with torch.inference_mode():
        return stability_score(den, sched, noise, cond, w, 1.0)


def test_refuses_without_cuda(parts):
    den, sched, cond = parts
    assert "CUDA device" in unavailable_reason("cpu")
    with pytest.raises(GraphUnavailable, match="CUDA graphs need a CUDA device.*fallback=True"):
        GraphedScorer(den, sched, cond, batch=2, shape=SHAPE)


def test_refuses_a_reduce_overhead_compiled_denoiser():
    class Fake:
        _cudagraphs = True

    assert "do not nest" in unavailable_reason("cuda", Fake()) or not HAS_CUDA


@pytest.mark.parametrize("K", [1, 2, 5])
def test_fallback_chunks_like_stability_score(parts, K):
    den, sched, cond = parts
    scorer = GraphedScorer(den, sched, cond, batch=2, shape=SHAPE, guidance_scale=5.0, fallback=True)
    assert not scorer.graphed and "fallback" in repr(scorer)
    noise = torch.randn(K, *SHAPE, generator=torch.Generator().manual_seed(K))
    got = scorer(noise)
    assert got.shape == (K,) and got.dtype == torch.float32
    assert (got - _reference(den, sched, noise, cond)).abs().max().item() <= TOL
    assert scorer.noise.shape == (2, *SHAPE)  # the static buffer never grows


def test_fallback_score_seeds_and_set_condition(parts):
    den, sched, cond = parts
    scorer = GraphedScorer(den, sched, cond, batch=3, shape=SHAPE, guidance_scale=5.0, fallback=True)
    seeds = [7, 0, 123, 5, 9]
    noise = noise_from_seeds(seeds, SHAPE)
    assert (scorer.score_seeds(seeds) - _reference(den, sched, noise, cond)).abs().max().item() <= TOL
    other = tiny_condition(seed=3)
    scorer.set_condition(other)
    assert (scorer(noise) - _reference(den, sched, noise, other)).abs().max().item() <= TOL
    assert scorer.cond.prompt_embeds is not other.prompt_embeds  # copied into the scorer's own tensors


def test_fallback_with_a_condition_per_row(parts):
    den, sched, _ = parts
    rows = tiny_condition(batch=3, seed=4)
    scorer = GraphedScorer(den, sched, rows, batch=3, shape=SHAPE, guidance_scale=5.0, fallback=True)
    noise = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(2))
    assert (scorer(noise) - _reference(den, sched, noise, rows)).abs().max().item() <= TOL
    other = tiny_condition(batch=3, seed=5)
    assert (scorer(noise, other) - _reference(den, sched, noise, other)).abs().max().item() <= TOL


def test_shape_dtype_and_condition_errors(parts):
    den, sched, cond = parts
    scorer = GraphedScorer(den, sched, cond, batch=2, shape=SHAPE, fallback=True)
    with pytest.raises(ValueError, match=r"noise must be \[K, 4, 16, 16\]"):
        scorer(torch.randn(2, 4, 8, 8))
    with pytest.raises(TypeError, match="float32"):
        scorer(torch.randn(2, *SHAPE, dtype=torch.float64))
    with pytest.raises(ValueError, match="does not match the captured"):
        scorer.set_condition(tiny_condition(seq_len=9))
    with pytest.raises(ValueError, match="batch 1 .* or 2"):
        GraphedScorer(den, sched, tiny_condition(batch=3), batch=2, shape=SHAPE, fallback=True)
    with pytest.raises(ValueError, match="positive int"):
        GraphedScorer(den, sched, cond, batch=0, shape=SHAPE, fallback=True)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("guidance", [0.0, 5.0])
def test_captured_graph_scores_like_eager_on_cuda(guidance):
    den = UNetDenoiser(tiny_unet().cuda())
    sched = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, 2, 2)
    cond = tiny_condition().to("cuda")
    scorer = GraphedScorer(den, sched, cond, batch=4, shape=SHAPE, guidance_scale=guidance)
    assert scorer.graphed and scorer.pool is not None
    seeds = list(range(10))
    noise = noise_from_seeds(seeds, SHAPE, device="cuda")
    want = _reference(den, sched, noise, cond, guidance)
    tol = 16 * torch.finfo(torch.float32).eps * 4 * 8  # TF32 / other kernels per batch on the GPU: 8× the CPU slack
    assert (scorer(noise) - want).abs().max().item() <= tol
    assert (scorer.score_seeds(seeds) - want).abs().max().item() <= tol
    other = tiny_condition(seed=3).to("cuda")
    scorer.set_condition(other)
    assert (scorer(noise) - _reference(den, sched, noise, other, guidance)).abs().max().item() <= tol
