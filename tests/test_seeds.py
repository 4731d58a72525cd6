"""noise_from_seeds draws exactly what diffusers' SDXL pipeline draws for a seed."""

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from noisefast.seeds import noise_from_seeds


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_matches_pipeline_prepare_latents(tiny_sdxl, dtype):
    seeds = [0, 7, 2**63 - 1]
    noise = noise_from_seeds(seeds, (4, 6, 10), dtype=dtype)
    assert noise.shape == (3, 4, 6, 10) and noise.dtype == dtype
    for i, s in enumerate(seeds):
        # what StableDiffusionXLPipeline.__call__ draws for height=48, width=80, generator=Generator("cpu").manual_seed(s)
        expected = tiny_sdxl.prepare_latents(1, 4, 48, 80, dtype, torch.device("cpu"), torch.Generator("cpu").manual_seed(s))
        assert torch.equal(noise[i : i + 1], expected)
    # one pipeline call with a list of generators draws the same batch
    batch = randn_tensor((3, 4, 6, 10), generator=[torch.Generator().manual_seed(s) for s in seeds], dtype=dtype)
    assert torch.equal(noise, batch)
    assert tiny_sdxl.scheduler.init_noise_sigma == 1.0


def test_seed_identity():
    a = noise_from_seeds(range(4), (4, 8, 8))
    assert torch.equal(a[2:3], noise_from_seeds([2], (4, 8, 8)))
    assert torch.equal(noise_from_seeds([np.int64(3)], [4, 8, 8]), a[3:4])
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize(
    "seeds, shape, kwargs, error, match",
    [
        ([-1], (4, 8, 8), {}, ValueError, "out of range"),
        ([2**63], (4, 8, 8), {}, ValueError, "out of range"),
        ([1.0], (4, 8, 8), {}, TypeError, "seeds must be ints"),
        ([True], (4, 8, 8), {}, TypeError, "seeds must be ints"),
        (["3"], (4, 8, 8), {}, TypeError, "seeds must be ints"),
        ("012", (4, 8, 8), {}, TypeError, "iterable of ints"),
        (5, (4, 8, 8), {}, TypeError, "iterable of ints"),
        ([], (4, 8, 8), {}, ValueError, "empty"),
        ([0], (4, 0, 8), {}, ValueError, "positive ints"),
        ([0], (4, 8.0, 8), {}, TypeError, "tuple of ints"),
        ([0], (4, 8, 8), {"dtype": torch.int64}, TypeError, "floating"),
    ],
)
def test_bad_input(seeds, shape, kwargs, error, match):
    with pytest.raises(error, match=match):
        noise_from_seeds(seeds, shape, **kwargs)
