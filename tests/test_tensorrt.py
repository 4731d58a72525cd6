"""The tensorrt backend: its pure parts everywhere, the build/cache/run path where TensorRT and a GPU exist."""

import importlib.util
import logging

import pytest
import torch

pytest.importorskip("onnx")

from noisefast.denoisers.backends import BackendUnavailableError  # noqa: E402
from noisefast.denoisers.onnx_export import export_unet_onnx  # noqa: E402
from noisefast.denoisers.onnx_io import read_onnx_specs  # noqa: E402
from noisefast.denoisers.trt import (  # noqa: E402
    InsufficientGpuMemoryError,
    TensorRTDenoiser,
    check_free_memory,
    engine_cache_key,
    profile_shapes,
)
from noisefast.testing import tiny_condition  # noqa: E402

SEQ = 7
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_GPU = torch.cuda.is_available()
needs_trt_gpu = pytest.mark.skipif(
    not (HAVE_TRT and HAVE_GPU),
    reason=f"needs TensorRT and a CUDA GPU (tensorrt installed: {HAVE_TRT}, CUDA available: {HAVE_GPU})",
)


@pytest.fixture(scope="module")
def exports(tiny_unet_loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("trt_onnx")
    return {
        "fp32": export_unet_onnx(tiny_unet_loaded, root / "fp32", seq_len=SEQ),
        "fp16_hw": export_unet_onnx(tiny_unet_loaded, root / "fp16", seq_len=SEQ, dtype=torch.float16, dynamic_hw=True),
    }


@pytest.mark.skipif(HAVE_TRT and HAVE_GPU, reason="TensorRT and a GPU are present: the backend is available")
def test_unavailable_backend_says_how_to_fix(exports):
    hint = "CUDA GPU" if HAVE_TRT else r"pip install 'noisefast\[tensorrt\]'"
    with pytest.raises(BackendUnavailableError, match=hint):
        TensorRTDenoiser(exports["fp32"])


def test_profile_shapes_from_the_exported_graph(exports):
    specs, _ = read_onnx_specs(exports["fp32"])
    with pytest.raises(ValueError, match="dynamic prompt length: pass seq_len"):
        profile_shapes(specs, (1, 2, 8))
    shapes = profile_shapes(specs, (1, 2, 8), seq_len=SEQ)
    assert shapes["sample"] == ((1, 4, 16, 16), (2, 4, 16, 16), (8, 4, 16, 16))
    assert shapes["timestep"] == ((1,), (2,), (8,))
    assert shapes["encoder_hidden_states"][2] == (8, SEQ, 64)
    assert shapes["time_ids"][0] == (1, 6)
    with pytest.raises(ValueError, match=r"1 <= min <= opt <= max.*\(2, 1, 4\)"):
        profile_shapes(specs, (2, 1, 4), seq_len=SEQ)
    dyn, _ = read_onnx_specs(exports["fp16_hw"])
    with pytest.raises(ValueError, match="latent_size"):
        profile_shapes(dyn, (1, 1, 1), seq_len=SEQ)
    assert profile_shapes(dyn, (1, 2, 4), (128, 96), 77)["sample"][1] == (2, 4, 128, 96)


def test_engine_cache_key_covers_every_part():
    base = dict(onnx_sha256="ab" * 32, profiles=[{"sample": ((1, 4, 16, 16),) * 3}], tensorrt="10.13.0",
                gpu="NVIDIA H100", compute_capability=(9, 0), workspace_bytes=None, optimization_level=None)
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**dict(reversed(base.items())))  # order-independent
    changed = [
        {"onnx_sha256": "cd" * 32}, {"profiles": [{"sample": ((1, 4, 16, 16),) * 2 + ((2, 4, 16, 16),)}]},
        {"tensorrt": "11.4.0"}, {"gpu": "NVIDIA H200"}, {"compute_capability": (8, 9)},
        {"workspace_bytes": 1 << 30}, {"optimization_level": 5},
    ]
    keys = {engine_cache_key(**{**base, **c}) for c in changed}
    assert len(keys) == len(changed) and key not in keys


def test_memory_check_refuses_with_numbers():
    gib = 1 << 30
    check_free_memory(10 * gib, 12 * gib, 80 * gib, "building the engine", "GPU X")
    with pytest.raises(InsufficientGpuMemoryError, match=r"about 10\.0 GiB.*GPU X has 3\.0 GiB free of 80\.0 GiB"):
        check_free_memory(10 * gib, 3 * gib, 80 * gib, "building the engine", "GPU X")


# --- the real path: build, cache, run (wherever TensorRT and a GPU exist) ---------------------------------


def _inputs(batch, device, size=(16, 16)):
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 4, *size, generator=g).to(device)
    t = torch.linspace(999, 1, batch).long().to(device)
    return x, t, tiny_condition(batch, seq_len=SEQ, seed=batch).positive().to(device)


@pytest.fixture(scope="module")
def cuda_ref(tiny_unet_loaded):
    import copy

    from noisefast.denoisers.unet import UNetDenoiser

    return UNetDenoiser(copy.deepcopy(tiny_unet_loaded).cuda())


@pytest.mark.cuda
@needs_trt_gpu
def test_build_cache_and_run_fp32(exports, cuda_ref, tmp_path, caplog):
    den = TensorRTDenoiser(exports["fp32"], profiles=[(1, 2, 4)], cache_dir=tmp_path)
    assert den.engine_path.is_file() and den.engine_path.with_suffix(".json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written files
    for batch in (1, 3):
        x, t, cond = _inputs(batch, "cuda")
        with torch.no_grad():
            ref = cuda_ref(x, t, cond)
        out = den(x, t, cond)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert ((out - ref).abs().max() / ref.abs().max()).item() < 5e-3  # TF32 where the GPU has it
    mtime = den.engine_path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="noisefast.denoisers.trt"):
        again = TensorRTDenoiser(exports["fp32"], profiles=[(1, 2, 4)], cache_dir=tmp_path)
    assert again.engine_path == den.engine_path and den.engine_path.stat().st_mtime_ns == mtime
    assert "loading cached TensorRT engine" in caplog.text
    with pytest.raises(ValueError, match=r"batch 5 is outside every engine profile \[\(1, 2, 4\)\]"):
        den(*_inputs(5, "cuda"))


@pytest.mark.cuda
@needs_trt_gpu
def test_fp16_dynamic_hw_two_profiles_and_cuda_graph(exports, cuda_ref, tmp_path):
    den = TensorRTDenoiser(exports["fp16_hw"], profiles=[(1, 1, 2), (3, 4, 6)], latent_size=(24, 32),
                           cache_dir=tmp_path, cuda_graph=True)
    assert den.dtype == torch.float16
    for batch in (2, 4, 4, 2):  # both profiles, graph capture then replay, and re-capture on change
        x, t, cond = _inputs(batch, "cuda", size=(24, 32))
        with torch.no_grad():
            ref = cuda_ref(x, t, cond)
        out = den(x, t, cond)
        assert out.dtype == torch.float32
        assert ((out - ref).abs().max() / ref.abs().max()).item() < 2e-2  # fp16 engine
