"""SD3 transformers through ONNX Runtime (exported with the TorchScript exporter), and FLUX's clear refusal."""

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from _tolerance import assert_close_to_reference, magnitude_atol  # noqa: E402
from noisefast.errors import BackendUnavailableError  # noqa: E402
from noisefast.pipeline import Engine  # noqa: E402

FAST = dict(height=64, width=64, steps=2, inversion_steps=2, guidance_scale=7.0)


@pytest.fixture(scope="module")
def sd3_engines(tiny_flow_folders):
    return Engine.from_pretrained(tiny_flow_folders["sd3"]), Engine.from_pretrained(tiny_flow_folders["sd3"],
                                                                                     backend="onnxruntime")


@pytest.mark.parametrize("size", [(8, 8), (16, 8)], ids=["8x8", "16x8"])
def test_ort_velocity_matches_torch(sd3_engines, size):
    """One call: ONNX Runtime at most 2× as far from the float64 transformer as torch's float32 (flash rule), at
    two latent sizes (the export has dynamic height/width, batch and text length)."""
    from noisefast.denoisers.flow import SD3Denoiser

    torch_engine, ort_engine = sd3_engines
    den, ort = torch_engine.den, ort_engine.den
    den64 = SD3Denoiser(copy.deepcopy(den.transformer).double())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, *size, generator=g)
    cond = torch_engine.condition("a red fox", settings=torch_engine.settings(**FAST)).expand(3)
    t = torch.tensor([900.0, 500.0, 0.0])
    with torch.no_grad():
        ref, ref64 = den(x, t, cond), den64(x.double(), t, cond.to(dtype=torch.float64))
    assert_close_to_reference(ort(x, t, cond), ref, ref64, name=f"ORT SD3 velocity {size}")


def test_engine_scores_through_onnxruntime(sd3_engines):
    torch_engine, ort_engine = sd3_engines
    a = torch_engine.score("a red fox", [0, 1, 2], **FAST)
    b = ort_engine.score("a red fox", [0, 1, 2], **FAST)
    # ORT reassociates every reduction: ~100 ulps per transformer call, 2+2 moves, CFG 7 amplifies by 1 + w
    np.testing.assert_allclose(b, a, rtol=0, atol=magnitude_atol(a, steps=4, guidance=7.0, ulps=100))


def test_cli_export_of_flow_folders(tiny_flow_folders, tmp_path, quiet_env, capsys):
    from noisefast.cli import main
    from noisefast.denoisers.onnx_io import read_onnx_specs

    assert main(["export", "--model", str(tiny_flow_folders["sd3"]), "--out", str(tmp_path / "sd3"), "--dynamic-hw"]) == 0
    assert list(read_onnx_specs(tmp_path / "sd3")[0]) == ["sample", "timestep", "encoder_hidden_states",
                                                           "pooled_projections"]  # fmt: skip
    capsys.readouterr()
    assert main(["export", "--model", str(tiny_flow_folders["flux-dev"]), "--out", str(tmp_path / "flux")]) == 2
    err = capsys.readouterr().err.strip()
    assert "aten::rms_norm" in err and "\n" not in err
    with pytest.raises(BackendUnavailableError, match="aten::rms_norm"):
        Engine.from_pretrained(tiny_flow_folders["flux-schnell"], backend="onnxruntime")
    with pytest.raises(BackendUnavailableError, match="'tensorrt' is not available for SD3"):
        Engine.from_pretrained(tiny_flow_folders["sd3"], backend="tensorrt")
