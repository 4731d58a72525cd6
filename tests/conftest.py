"""Shared fixtures: tiny random SDXL-architecture models, saved and loaded back (the real loading code),
and the CPU instruction-set levels the kernel tests run under."""

import os
import shutil
import tempfile

import pytest

from noisefast import _ext

# The noisefast cache (ONNX exports, auto's decisions, inductor's cache) of this test session: a fresh folder, never
# the user's ~/.cache/noisefast. Set in the environment, so the CLI, server and screening subprocesses the tests
# start share it (and so read the decisions `backend="auto"` took here: the same backend on both sides of a
# cross-process comparison).
TEST_CACHE_DIR = tempfile.mkdtemp(prefix="noisefast-test-cache-")
os.environ["NOISEFAST_CACHE_DIR"] = TEST_CACHE_DIR


def pytest_terminal_summary(terminalreporter):
    """What ``backend="auto"`` did in this session (each export and decision costs test time)."""
    from pathlib import Path

    root = Path(TEST_CACHE_DIR)
    exports = len(list((root / "onnx").glob("*/model.onnx"))) if (root / "onnx").is_dir() else 0
    decisions = len(list((root / "auto").glob("*.json"))) if (root / "auto").is_dir() else 0
    terminalreporter.write_line(f"noisefast test cache: {exports} ONNX exports, {decisions} auto decisions")


def pytest_unconfigure(config):  # after the terminal summary
    shutil.rmtree(TEST_CACHE_DIR, ignore_errors=True)

# The kernel tests (tests/test_ops_{ddim,cosine,momentum}.py) run once per CPU instruction-set
# level this machine can execute (baseline, avx2, avx512: the kernels' compiled versions, see
# csrc/cpu_isa.h), so a rounding or correctness bug in any version shows up on every machine, not
# only on the one whose CPU picks it. NOISEFAST_CPU_ISA caps the levels here as it caps the
# dispatch (=baseline: baseline only). The slow end-to-end tests run with the load-time level only.
KERNEL_TEST_MODULES = {"test_ops_ddim", "test_ops_cosine", "test_ops_momentum"}
CPU_ISA_LEVELS = _ext.cpu_isa_levels()
if CPU_ISA_LEVELS:
    CPU_ISA_LEVELS = CPU_ISA_LEVELS[: CPU_ISA_LEVELS.index(_ext.build_info()["cpu_isa"]) + 1]


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__.rpartition(".")[2] in KERNEL_TEST_MODULES and CPU_ISA_LEVELS:
        metafunc.parametrize("kernel_cpu_isa", CPU_ISA_LEVELS, indirect=True, ids=lambda level: f"isa-{level}")


def pytest_collection_modifyitems(config, items):
    """CUDA cases do not run CPU code: keep them once (under the best level), not once per level."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        redundant = params.get("device") == "cuda" and params.get("kernel_cpu_isa", CPU_ISA_LEVELS[-1]) != CPU_ISA_LEVELS[-1]
        (drop if redundant else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def kernel_cpu_isa(request):
    """The CPU ISA level of a kernel test (None elsewhere: the process's level, NOISEFAST_CPU_ISA or the best)."""
    level = getattr(request, "param", None)
    if level is None:
        yield None
        return
    with _ext.cpu_isa(level):
        yield level


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
def tiny_denoiser64(tiny_denoiser):
    """The same UNet in float64: the reference of the flash-rule tolerances (tests/_tolerance.py)."""
    from _tolerance import float64_denoiser

    return float64_denoiser(tiny_denoiser)


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


@pytest.fixture(scope="module")
def digits_engine_1thread():
    """The built-in digits Engine with torch on 1 thread (as the CLI runs pixel models); restored afterwards."""
    import torch

    import noisefast as nf

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield nf.Engine.from_pretrained("builtin:digits")
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_flow_folders(tmp_path_factory):
    """Folders holding complete tiny flow-matching pipelines, saved like real ones: ``"sd3"``
    (StableDiffusion3Pipeline, shift 3), ``"flux-dev"`` (FluxPipeline with the guidance embedding, dynamic
    shifting) and ``"flux-schnell"`` (no guidance embedding, shift 1)."""
    from noisefast.testing import tiny_flux_pipeline, tiny_sd3_pipeline

    root = tmp_path_factory.mktemp("tiny_flow")
    tiny_sd3_pipeline(root / "sd3")
    tiny_flux_pipeline(root / "flux-dev", guidance_embeds=True)
    tiny_flux_pipeline(root / "flux-schnell", guidance_embeds=False)
    return {name: root / name for name in ("sd3", "flux-dev", "flux-schnell")}
