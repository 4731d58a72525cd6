"""`make_denoiser` across backends, the compile backend, and the artifact helpers they share."""

import importlib.util

import pytest
import torch
from _tolerance import assert_close_to_reference, assert_denoiser_close

from noisefast.atomic import atomic_write_bytes
from noisefast.denoisers.backends import BACKENDS, BackendUnavailableError, make_denoiser
from noisefast.denoisers.compiled import CompiledDenoiser
from noisefast.denoisers.unet import UNetDenoiser
from noisefast.testing import tiny_condition

SEQ = 7
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _inputs(batch=2):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 4, 16, 16, generator=g)  # [B, 4, 16, 16]
    t = torch.tensor([700, 30][:batch])  # [B]
    return x, t, tiny_condition(batch, seq_len=SEQ, seed=3).positive()


# Tolerances (tests/_tolerance.py): another runtime's float32 UNet (ONNX Runtime, torch.compile) may be at most
# twice as far from the float64 UNet as torch's own float32 UNet (flash rule).


def test_unknown_backend_lists_the_choices(tiny_unet_loaded):
    choices = "choose one of auto, torch, compile, onnxruntime, tensorrt"
    with pytest.raises(ValueError, match=f"unknown backend 'tensorrtx'; {choices}"):
        make_denoiser(tiny_unet_loaded, "tensorrtx")
    assert BACKENDS == ("auto", "torch", "compile", "onnxruntime", "tensorrt")


def test_torch_backend_from_module_and_from_folder(tiny_unet_loaded, tmp_path):
    den = make_denoiser(tiny_unet_loaded)
    assert isinstance(den, UNetDenoiser) and den.unet is tiny_unet_loaded
    tiny_unet_loaded.save_pretrained(tmp_path / "pipe" / "unet")
    loaded = make_denoiser(tmp_path / "pipe", "torch")  # a pipeline folder: the UNet is in unet/
    x, t, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond), den(x, t, cond))


def test_onnx_export_is_not_a_torch_model(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    for backend in ("auto", "torch", "compile"):
        with pytest.raises(TypeError, match=f"backend '{backend}' runs the diffusers UNet, not an ONNX export"):
            make_denoiser(tmp_path, backend)


@pytest.mark.skipif(not HAVE_ORT, reason="needs onnx and onnxruntime")
def test_onnxruntime_from_module_exports_into_the_cache_once(tiny_unet_loaded, tiny_denoiser, tiny_denoiser64,
                                                              tmp_path):
    den = make_denoiser(tiny_unet_loaded, "onnxruntime", export_options={"seq_len": SEQ}, num_threads=1,
                        cache_dir=tmp_path / "cache")
    assert den.path.parent.parent == tmp_path / "cache" / "onnx"  # <cache>/onnx/<key>/model.onnx
    stamp = den.path.stat().st_mtime_ns
    again = make_denoiser(tiny_unet_loaded, "onnxruntime", export_options={"seq_len": SEQ}, cache_dir=tmp_path / "cache")
    assert again.path == den.path and den.path.stat().st_mtime_ns == stamp  # reused, not exported again
    x, t, cond = _inputs()
    assert_denoiser_close(den(x, t, cond), tiny_denoiser, tiny_denoiser64, x, t, cond, name="ORT from module")
    kept = make_denoiser(tiny_unet_loaded, "onnxruntime", export_dir=tmp_path / "e", export_options={"seq_len": SEQ})
    assert kept.path == tmp_path / "e" / "model.onnx" and kept.path.is_file()
    assert_denoiser_close(make_denoiser(tmp_path / "e", "onnxruntime")(x, t, cond), tiny_denoiser, tiny_denoiser64,
                          x, t, cond, name="ORT from folder")  # fmt: skip
    with pytest.raises(ValueError, match="only when exporting a model"):
        make_denoiser(tmp_path / "e", "onnxruntime", export_options={"seq_len": SEQ})


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(),
                    reason="TensorRT and a GPU are present: the backend is available")
def test_tensorrt_unavailable_fails_before_exporting(tiny_unet_loaded, tmp_path):
    with pytest.raises(BackendUnavailableError, match="tensorrt backend needs"):
        make_denoiser(tiny_unet_loaded, "tensorrt", export_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_compile_backend_inductor_on_cpu(tiny_unet_loaded, tiny_denoiser, tiny_denoiser64):
    den = make_denoiser(tiny_unet_loaded, "compile")  # CPU default: inductor, default mode, static shapes
    assert den.mode is None
    x, t, cond = _inputs()
    with torch.no_grad():
        out = den(x, t, cond)
    assert_denoiser_close(out, tiny_denoiser, tiny_denoiser64, x, t, cond, name="compile inductor")


def test_compile_backend_gradients_go_through_eager_torch(tiny_unet_loaded, tiny_denoiser):
    from noisefast.denoisers.compiled import compiled_graphs

    den = make_denoiser(tiny_unet_loaded, "compile", compile_backend="aot_eager")
    x, t, cond = _inputs()
    x_c, x_e = x.clone().requires_grad_(), x.clone().requires_grad_()
    before = compiled_graphs()
    (g_c,) = torch.autograd.grad(den(x_c, t, cond).square().sum(), x_c)
    (g_e,) = torch.autograd.grad(tiny_denoiser(x_e, t, cond).square().sum(), x_e)
    assert compiled_graphs() == before  # no backward graph compiled: the call ran the eager UNet
    assert torch.equal(g_c, g_e)


def test_compile_backend_matches_torch_and_never_recompiles():
    """Dynamic batch: every batch size of a range runs on one graph (the ranges come from branches on the batch in
    diffusers' UNet and torch's convolution-backend choice: 1, 2–15, 16–63, ≥ 64 here), and normal and inference
    tensors share graphs: repeated calls never recompile."""
    from _tolerance import float64_denoiser

    from noisefast.denoisers.compiled import compiled_graphs
    from noisefast.testing import tiny_unet

    unet = tiny_unet(seed=5).eval()  # a module no other test compiled: the graph count starts here
    # aot_eager: dynamo capture + AOTAutograd without inductor's C++ codegen (seconds on CPU);
    # the default inductor backend is covered by the slow test above.
    den = make_denoiser(unet, "compile", compile_backend="aot_eager")
    assert isinstance(den, CompiledDenoiser) and den.in_channels == 4 and den.sample_size == 16
    eager = UNetDenoiser(unet)
    x, t, cond = _inputs()
    before = compiled_graphs()
    with torch.no_grad():
        out = den(x, t, cond)
    assert_denoiser_close(out, eager, float64_denoiser(eager), x, t, cond, name="compile aot_eager")
    first = compiled_graphs()
    assert first > before  # it did compile (the UNet's graph; dynamo may split off a wrapper frame)

    def call(batch, inference):
        x, t = torch.randn(batch, 4, 16, 16), torch.full((batch,), 500)
        with torch.inference_mode(inference):  # the scoring chain's later steps hand it inference tensors
            return den(x, t, tiny_condition(batch, seq_len=SEQ, seed=3).positive())

    for batch in (2, 5, 7, 15, 3):  # the 2–15 range: the same graph, whatever kind of tensor comes in
        assert call(batch, False).shape[0] == call(batch, True).shape[0] == batch
    assert compiled_graphs() == first


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = atomic_write_bytes(tmp_path / "sub" / "engine.bin", b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # the write fails midway
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["engine.bin"]  # no temporary left behind
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
