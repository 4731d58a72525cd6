"""Shared fixtures: tiny random SDXL-architecture models, saved and loaded back (the real loading code)."""

import os

import pytest


@pytest.fixture(scope="session")
def tiny_unet_loaded(tmp_path_factory):
    """The tiny SDXL-architecture UNet after ``save_pretrained`` → ``from_pretrained`` (eval, fp32, CPU)."""
    from diffusers import UNet2DConditionModel

    from noisefast.testing import tiny_unet

    folder = tmp_path_factory.mktemp("tiny_unet")
    tiny_unet(seed=0).save_pretrained(folder)
    return UNet2DConditionModel.from_pretrained(folder).eval()


@pytest.fixture(scope="session")
def tiny_denoiser(tiny_unet_loaded):
    """`UNetDenoiser` over the saved-and-reloaded tiny UNet."""
    from noisefast.denoisers.unet import UNetDenoiser

    return UNetDenoiser(tiny_unet_loaded)


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory):
    """A folder holding a complete tiny StableDiffusionXLPipeline (DDIMScheduler with SDXL's settings)."""
    from noisefast.testing import tiny_sdxl_pipeline

    folder = tmp_path_factory.mktemp("tiny_sdxl")
    tiny_sdxl_pipeline(folder)
    return folder


@pytest.fixture
def tiny_sdxl(tiny_sdxl_folder):
    """A fresh tiny StableDiffusionXLPipeline loaded from `tiny_sdxl_folder` (tests may swap its scheduler)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def quiet_env(monkeypatch):
    """In-process ``noisefast.cli.main()`` sets library verbosity variables (setdefault) and torch's thread
    count; restore both."""
    import torch

    quiet = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    for k, v in quiet.items():
        monkeypatch.setenv(k, os.environ.get(k, v))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
