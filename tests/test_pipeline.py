"""Engine end to end on a tiny random SDXL pipeline saved to disk and loaded the real way."""

import json
import shutil

import pytest
import torch

from _tolerance import assert_close_to_reference, eps, stock_sdxl_latents64
from noisefast.errors import NoisefastError
from noisefast.pipeline import Engine

# small and quick: latents 4×8×8, two DDIM steps each way
FAST = dict(height=64, width=64, steps=2, inversion_steps=2, guidance_scale=5.5)


@pytest.fixture(scope="module")
def engine(tiny_sdxl_folder):
    return Engine.from_pretrained(tiny_sdxl_folder)


def _copy_pipeline(src, dst, *, scheduler=None, unet=None):
    """A copy of the pipeline folder with edited scheduler/unet configs (weights are linked, not copied)."""
    dst.mkdir()
    for item in src.iterdir():
        (dst / item.name).symlink_to(item) if item.is_dir() else shutil.copy(item, dst / item.name)
    for sub, edit in (("scheduler", scheduler), ("unet", unet)):
        if edit is None:
            continue
        (dst / sub).unlink()
        shutil.copytree(src / sub, dst / sub)
        name = "scheduler_config.json" if sub == "scheduler" else "config.json"
        cfg = json.loads((dst / sub / name).read_text())
        (dst / sub / name).write_text(json.dumps(cfg | edit))
    return dst


def test_loads_sdxl_folder_with_sdxl_defaults_and_condition(engine, tiny_sdxl):
    assert (engine.kind, engine.defaults.family, engine.device.type, engine.dtype) == ("sdxl", "sdxl", "cpu", torch.float32)
    assert (engine.defaults.height, engine.defaults.guidance_scale, engine.defaults.inversion_guidance_scale) == (1024, 5.5, 1.0)
    s = engine.settings(**FAST)
    cond = engine.encode("a red fox", "blurry", s)
    # the condition is exactly what the stock pipeline's encode_prompt gives (both encoders, pooled, negative)
    pe, npe, pooled, npooled = tiny_sdxl.encode_prompt("a red fox", device="cpu", negative_prompt="blurry")
    for mine, ref in ((cond.prompt_embeds, pe), (cond.negative_prompt_embeds, npe),
                      (cond.pooled_prompt_embeds, pooled), (cond.negative_pooled_prompt_embeds, npooled)):  # fmt: skip
        torch.testing.assert_close(mine, ref, rtol=0, atol=0)
    assert cond.time_ids.tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]
    # no guidance anywhere → no unconditional half is encoded
    assert engine.encode("a red fox", None, engine.settings(**FAST | {"guidance_scale": 0.0})).negative_prompt_embeds is None


@pytest.mark.parametrize("guidance", [5.5, 0.0])
def test_generate_matches_stock_pipeline_with_ddim(engine, tiny_sdxl, guidance):
    from diffusers import DDIMScheduler

    tiny_sdxl.scheduler = DDIMScheduler.from_config(tiny_sdxl.scheduler.config)
    seed = 7
    ref = tiny_sdxl("a red fox", height=64, width=64, num_inference_steps=3, guidance_scale=guidance,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images  # fmt: skip
    gen = engine.generate("a red fox", [seed], **FAST | {"steps": 3, "guidance_scale": guidance})
    # decoding is the stock pipeline's VAE decode + postprocess (before the UNet goes float64 below)
    with torch.no_grad():
        decoded = tiny_sdxl.vae.decode(ref / tiny_sdxl.vae.config.scaling_factor).sample
    img = tiny_sdxl.image_processor.postprocess(decoded, output_type="np")[0]
    got = torch.tensor(list(gen.images[0].getdata()), dtype=torch.float32).view(64, 64, 3) / 255
    # PIL stores round(255·v): one quantisation step, plus float32 rounding of v ∈ [0, 1] (a few eps)
    assert (got - torch.from_numpy(img)).abs().max() <= 1 / 255 + 4 * 2.0**-24
    assert gen.images[0].size == (64, 64) and gen.images[0].mode == "RGB"
    # flash rule against diffusers in float64: at most 2× diffusers' own float32 error (which carries the
    # guidance amplification 1+w and the chained steps) plus a few ulps (CPU ISA / FMA rounding)
    ref64 = stock_sdxl_latents64(tiny_sdxl, "a red fox", seed, height=64, width=64, steps=3, guidance=guidance)
    assert_close_to_reference(gen.latents, ref, ref64, name=f"latents w={guidance}")


def test_select_best_is_argmax_of_scores(engine):
    seeds = [3, 0, 5]
    sel = engine.select("a red fox", seeds, **FAST)
    scores = engine.score("a red fox", seeds, **FAST)
    assert sorted(sel.seeds) == sorted(seeds)
    assert sel.best_seed == seeds[int(scores.argmax())] and sel.worst_seed == seeds[int(scores.argmin())]
    torch.testing.assert_close(torch.tensor([sel.score_of(s) for s in seeds]), scores)
    assert ((scores > -1) & (scores < 1)).all()
    # the same through explicit noise
    noise = engine.noise(seeds, engine.settings(**FAST))
    torch.testing.assert_close(engine.score("a red fox", noise=noise, **FAST), scores)


def test_turbo_detected_from_trailing_scheduler(tiny_sdxl_folder, tmp_path):
    folder = _copy_pipeline(tiny_sdxl_folder, tmp_path / "tiny-xl", scheduler={"timestep_spacing": "trailing"})
    eng = Engine.from_pretrained(folder)
    d = eng.defaults
    assert (d.family, d.height, d.width, d.steps, d.inversion_steps, d.guidance_scale) == ("sdxl-turbo", 512, 512, 1, 1, 0.0)
    assert Engine.from_pretrained(folder, family="sdxl").defaults.family == "sdxl"


def test_fp16_keeps_the_overflowing_vae_in_fp32(tiny_sdxl_folder):
    eng = Engine.from_pretrained(tiny_sdxl_folder, dtype="fp16")
    assert eng.model.unet.dtype == torch.float16
    assert eng.model.vae.config.force_upcast and eng.model.vae.dtype == torch.float32
    assert eng.noise([0]).dtype == torch.float16  # drawn in the pipeline's dtype, as diffusers does


def test_bad_folders_and_ids(tiny_sdxl_folder, tmp_path, monkeypatch):
    with pytest.raises(NoisefastError, match="no model_index.json"):
        Engine.from_pretrained(tmp_path)
    not_xl = _copy_pipeline(tiny_sdxl_folder, tmp_path / "sd15", unet={"addition_embed_type": None})
    with pytest.raises(NoisefastError, match="not an SDXL pipeline"):
        Engine.from_pretrained(not_xl)
    with pytest.raises(NoisefastError, match="does not exist"):
        Engine.from_pretrained(str(tmp_path / "missing" / "folder"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(NoisefastError, match=r"not in the local Hugging Face cache.*--model /path/to/folder"):
        Engine.from_pretrained("noisefast-tests/no-such-model")


def test_bad_settings(engine):
    with pytest.raises(NoisefastError, match="height=100 is not a multiple of 8"):
        engine.settings(height=100)
    with pytest.raises(NoisefastError, match=r"steps must be in \[1, 1000\], got 0"):
        engine.settings(steps=0)
    with pytest.raises(NoisefastError, match="exactly one of seeds or noise"):
        engine.score("x", **FAST)
    with pytest.raises(NoisefastError, match=r"noise must be \[B, 4, 8, 8\]"):
        engine.score("x", noise=torch.zeros(1, 4, 16, 16), **FAST)


def test_builtin_digits_through_the_same_engine():
    from noisefast.builtin import builtin_model_path, load_builtin_components
    from noisefast.builtin.prompts import encode_prompts

    eng = Engine.from_pretrained("builtin:digits")
    card = json.loads((builtin_model_path("digits") / "noisefast_model.json").read_text())
    d = eng.defaults
    assert (eng.kind, d.family, d.height, d.width) == ("pixel", "pixel", card["height"], card["width"])
    assert (d.steps, d.guidance_scale) == (card["default_steps"], card["default_guidance_scale"])
    s = eng.settings()
    assert eng.latent_shape(s) == (1, card["height"], card["width"])  # no VAE: the latent is the image
    # the condition is the training encoding: last hidden state, the empty prompt as the unconditional half
    parts = load_builtin_components("digits")
    cond = eng.encode("a handwritten digit seven", None, s)
    with torch.no_grad():
        ref = encode_prompts(parts.tokenizer, parts.text_encoder, ["a handwritten digit seven", ""])
    torch.testing.assert_close(cond.prompt_embeds, ref[:1])
    torch.testing.assert_close(cond.negative_prompt_embeds, ref[1:])
    assert cond.pooled_prompt_embeds is None and cond.time_ids is None
    gen = eng.generate("a handwritten digit seven", [0, 1], steps=4)
    assert [im.size for im in gen.images] == [(128, 128)] * 2 and gen.images[0].mode == "L"
    # pixels are the latent mapped [-1, 1] → 0..255, upscaled nearest-neighbour
    x = gen.latents[0, 0].clamp(-1, 1)
    small = torch.tensor(list(gen.images[0].resize((card["width"], card["height"]), 0).getdata()), dtype=torch.float32)
    # rounding to an integer (≤ 0.5) plus float32 rounding of (x + 1)·127.5 (a few ulps at 255)
    assert ((small.view_as(x) - (x + 1) * 127.5).abs() <= 0.5 + 4 * 255 * eps(torch.float32)).all()
    with pytest.raises(NoisefastError, match="height=9 is not a multiple of 2"):
        eng.settings(height=9)
