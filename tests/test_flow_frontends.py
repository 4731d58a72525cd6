"""SD3 / FLUX folders through every door: ``noisefast select`` (the best seed reproduces in the stock pipeline and
decodes to the stock pipeline's image), ``POST /v1/select`` and ``noisefast screen`` — tiny pipelines."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _flow_helpers import stock_latents, stock_latents64
from _tolerance import assert_close_to_reference, magnitude_atol
from noisefast.pipeline import Engine

FAST = dict(height=64, width=64, steps=2, inversion_steps=2)
CLI_FAST = ["--height", "64", "--width", "64", "--steps", "2", "--inversion-steps", "2", "--threads", "1"]
GUIDANCE = {"sd3": 7.0, "flux-dev": 3.5}


@pytest.mark.parametrize("name", ["sd3", "flux-dev"])
def test_cli_select_best_seed_reproduces_in_the_stock_pipeline(name, tiny_flow_folders, tmp_path, quiet_env, capsys):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from noisefast.cli import main

    folder, out, w = tiny_flow_folders[name], tmp_path / "out", GUIDANCE[name]
    assert main(["select", "--model", str(folder), "--prompt", "a red fox", "--seeds", "0:4", *CLI_FAST,
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "Euler (flow matching) 2 steps" in printed and ("(embedded)" in printed) == (name == "flux-dev")
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["kind"] == ("sd3" if name == "sd3" else "flux") and report["settings"]["guidance_scale"] == w
    (rec,) = report["runs"]
    best = rec["best_seed"]
    assert best == rec["seeds"][int(np.argmax(rec["scores"]))] and len(rec["scores"]) == 4

    # the stock pipeline with Generator("cpu").manual_seed(best) gives the same x₀ (flash rule vs float64) ...
    cls = StableDiffusion3Pipeline if name == "sd3" else FluxPipeline
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    gen = Engine.from_pretrained(folder).generate("a red fox", [best], guidance_scale=w, **FAST)
    ref = stock_latents(pipe, "a red fox", best, height=64, width=64, steps=2, guidance=w)
    # ... and the same image: the stock pipeline decodes (FLUX: unpacks, then scale and shift) as the engine does
    stock_img = pipe("a red fox", height=64, width=64, num_inference_steps=2, guidance_scale=w, output_type="np",
                     generator=torch.Generator("cpu").manual_seed(best)).images[0]  # fmt: skip
    with Image.open(out / "best.png") as im:
        png = np.asarray(im).astype(np.int16)
    # the CLI generated best and worst in one batch, this call the best alone: a transformer's float32 matmuls round
    # by batch size, so 8-bit pixels may differ by one quantisation step (PIL stores round(255·v))
    assert np.abs(png - np.asarray(gen.images[0])).max() <= 1
    assert np.abs(png / 255.0 - stock_img).max() <= 1.5 / 255
    ref64 = stock_latents64(pipe, "a red fox", best, height=64, width=64, steps=2, guidance=w)
    assert_close_to_reference(gen.latents, ref, ref64, name=f"{name} best seed latents")


@pytest.fixture(scope="module")
def flux_engine(tiny_flow_folders):
    threads = torch.get_num_threads()
    yield Engine.from_pretrained(tiny_flow_folders["flux-dev"])
    torch.set_num_threads(threads)


def test_serve_select_equals_the_engine(flux_engine):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from _serve_helpers import run, served

    async def go():
        async with served(flux_engine) as c:
            return await c.post("/v1/select", json={"prompt": "a red fox", "seeds": {"start": 0, "count": 4},
                                                    "settings": FAST})  # fmt: skip

    r = run(go())
    assert r.status_code == 200, r.text
    got, sel = r.json(), flux_engine.select("a red fox", range(4), **FAST)
    assert got["seeds"] == list(sel.seeds) and got["best_seed"] == sel.best_seed and got["source"] == "computed"
    torch.testing.assert_close(torch.tensor(got["scores"]), sel.scores, atol=1e-6, rtol=0)


def test_cli_screen_rows_equal_engine_scores(tiny_flow_folders, tmp_path, quiet_env, capsys):
    pytest.importorskip("pyarrow")
    from noisefast.cli import main
    from noisefast.screen import load_scores

    prompts = ["a red fox", "a blue car"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    folder, w = tiny_flow_folders["sd3"], GUIDANCE["sd3"]
    assert main(["screen", "--prompts", str(tmp_path / "p.txt"), "--model", str(folder), "--seeds", "0:4",
                 "--out", str(tmp_path / "run"), "--shard-size", "4", "--batch-size", "4", "--guidance", str(w),
                 *CLI_FAST]) == 0  # fmt: skip
    assert "noisefast screen" in capsys.readouterr().out
    df = load_scores(tmp_path / "run")
    assert len(df) == 8 and set(df["prompt"]) == set(prompts)
    engine = Engine.from_pretrained(folder)
    for prompt in prompts:
        part = df[df["prompt"] == prompt].sort_values("seed")
        want = engine.score(prompt, list(range(4)), guidance_scale=w, batch_size=4, **FAST)
        # the CLI ran on 1 thread, this engine on the test's: float32 reductions round differently in each of the
        # 2+2 guided transformer calls (magnitude model, tests/_tolerance.py)
        atol = magnitude_atol(1.0, dtype=torch.float32, steps=4, guidance=w)
        np.testing.assert_allclose(part["stability"].to_numpy(), want.double().numpy(), atol=atol, rtol=0)


def test_from_pipe_and_selected_latents_reproduce_in_the_stock_flux_pipeline(tiny_flow_folders):
    """Engine.from_pipe over a user's FluxPipeline (modules shared); the selected noise, packed as the pipeline's
    latents= takes it, is exactly the pipeline's own draw for that seed."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_flow_folders["flux-schnell"])
    pipe.set_progress_bar_config(disable=True)
    engine = Engine.from_pipe(pipe)
    assert engine.model.arch.transformer is pipe.transformer and engine.defaults.family == "flux-schnell"
    sel = engine.select("a red fox", range(3), **FAST)
    packed = engine.pipeline_latents(sel.best_latents)
    C, h, w = engine.latent_shape(engine.settings(**FAST))
    assert packed.shape == (1, h // 2 * (w // 2), 4 * C)
    kw = dict(height=64, width=64, num_inference_steps=2, guidance_scale=0.0, output_type="latent")
    given = pipe("a red fox", latents=packed, **kw).images
    drawn = pipe("a red fox", generator=torch.Generator("cpu").manual_seed(sel.best_seed), **kw).images
    torch.testing.assert_close(given, drawn, rtol=0, atol=0)
