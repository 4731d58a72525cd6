"""diffusers-native: ``Engine.from_pipe(pipe)`` over a user's loaded StableDiffusionXLPipeline (modules shared, not
copied), and the selected seed's ``latents`` reproducing the engine's sample in the stock pipeline."""

import pytest
import torch

from _tolerance import assert_close_to_reference, stock_sdxl_latents64
from noisefast.errors import InputError, ModelError
from noisefast.pipeline import Engine

FAST = dict(height=64, width=64, steps=2, inversion_steps=2, guidance_scale=5.5)


def test_from_pipe_shares_the_modules_and_scores_like_from_pretrained(tiny_sdxl, tiny_sdxl_folder):
    engine = Engine.from_pipe(tiny_sdxl)
    assert engine.model.unet is tiny_sdxl.unet and engine.model.vae is tiny_sdxl.vae  # shared, not copied
    assert (engine.kind, engine.device.type, engine.dtype) == ("sdxl", "cpu", torch.float32)
    loaded = Engine.from_pretrained(tiny_sdxl_folder)
    seeds = [0, 1, 2, 3]
    # the same weights and condition, the same batches and threads: the same floats
    torch.testing.assert_close(engine.score("a red fox", seeds, **FAST), loaded.score("a red fox", seeds, **FAST),
                               rtol=0, atol=0)  # fmt: skip
    with pytest.raises(InputError, match="takes device from the pipeline"):
        Engine.from_pipe(tiny_sdxl, device="cpu")
    with pytest.raises(ModelError, match="takes a StableDiffusionXLPipeline"):
        Engine.from_pipe(object())


def test_selected_latents_reproduce_in_the_stock_pipeline(tiny_sdxl):
    from diffusers import DDIMScheduler

    tiny_sdxl.scheduler = DDIMScheduler.from_config(tiny_sdxl.scheduler.config)
    engine = Engine.from_pipe(tiny_sdxl)
    sel = engine.select("a red fox", range(4), **FAST)
    assert sel.best_latents.shape == (1, 4, 8, 8)
    x0 = engine.generate("a red fox", [sel.best_seed], height=64, width=64, steps=2, guidance_scale=5.5).latents
    # what a diffusers user writes with the chosen noise
    ref = tiny_sdxl("a red fox", latents=sel.best_latents, height=64, width=64, num_inference_steps=2,
                    guidance_scale=5.5, output_type="latent").images  # fmt: skip
    # the same seed through the stock pipeline's own generator: the latents are exactly its draw
    drawn = tiny_sdxl("a red fox", height=64, width=64, num_inference_steps=2, guidance_scale=5.5,
                      generator=torch.Generator("cpu").manual_seed(sel.best_seed), output_type="latent").images  # fmt: skip
    torch.testing.assert_close(ref, drawn, rtol=0, atol=0)
    # flash rule against diffusers in float64 (tests/_tolerance.py): ≤ 2× diffusers' own float32 error + ulps
    ref64 = stock_sdxl_latents64(tiny_sdxl, "a red fox", sel.best_seed, height=64, width=64, steps=2, guidance=5.5)
    assert_close_to_reference(x0, ref, ref64, name="best seed x0 from latents=")
