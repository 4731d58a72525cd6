"""ONNX export of diffusers UNets and the onnxruntime backend (CPU), against the torch UNet."""

import json

import pytest
import torch
from _tolerance import UNET_ULPS, assert_close_to_reference, assert_denoiser_close, eps, float64_denoiser

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from noisefast.denoisers.base import Condition  # noqa: E402
from noisefast.denoisers.onnx_export import export_unet_onnx, main  # noqa: E402
from noisefast.denoisers.onnx_io import (  # noqa: E402
    DATA_FILE,
    META_FILE,
    MODEL_FILE,
    onnx_content_hash,
    read_onnx_specs,
)
from noisefast.denoisers.ort import OnnxRuntimeDenoiser  # noqa: E402
from noisefast.denoisers.unet import UNetDenoiser  # noqa: E402
from noisefast.testing import TINY_CROSS_DIM, tiny_condition, tiny_unet  # noqa: E402

SEQ = 7  # tiny_condition's prompt length


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# Tolerances (tests/_tolerance.py): ONNX Runtime's float32 UNet may be at most twice as far from the float64 UNet
# as torch's own float32 UNet (flash rule; measured here: ORT 5–6e-7 relative, torch 0.9–1.1e-6).


def inputs(batch, seed=1, size=(16, 16)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, *size, generator=g)  # [B, 4, H, W]
    t = torch.tensor([999, 500, 20, 1][:batch] + [250] * max(0, batch - 4))  # [B] int64, as the schedule gives
    return x, t, tiny_condition(batch, seq_len=SEQ, seed=seed).positive()


@pytest.fixture(scope="module")
def sdxl_export(tiny_unet_loaded, tmp_path_factory):
    return export_unet_onnx(tiny_unet_loaded, tmp_path_factory.mktemp("onnx") / "unet", seq_len=SEQ)


@pytest.fixture(scope="module")
def ort_den(sdxl_export):
    return OnnxRuntimeDenoiser(sdxl_export, num_threads=1)


@pytest.mark.parametrize("batch", [1, 3])
def test_ort_matches_torch_fp32(ort_den, tiny_denoiser, tiny_denoiser64, batch):
    x, t, cond = inputs(batch)
    out = ort_den(x, t, cond)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_denoiser_close(out, tiny_denoiser, tiny_denoiser64, x, t, cond, name=f"ORT batch {batch}")


def test_ort_broadcasts_batch1_condition_and_scalar_t(ort_den, tiny_denoiser, tiny_denoiser64):
    x, _, _ = inputs(3)
    cond = tiny_condition(1, seq_len=SEQ).positive()
    t = torch.tensor(400)
    assert_denoiser_close(ort_den(x, t, cond), tiny_denoiser, tiny_denoiser64, x, t, cond, name="broadcast")


def test_export_folder_and_specs(sdxl_export):
    folder = sdxl_export.parent
    assert sorted(p.name for p in folder.iterdir()) == [MODEL_FILE, META_FILE]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    specs, out = read_onnx_specs(sdxl_export)
    assert list(specs) == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    assert specs["sample"].shape == ("batch", 4, 16, 16) and specs["timestep"].dtype == torch.float32
    assert specs["encoder_hidden_states"].shape == ("batch", "sequence", TINY_CROSS_DIM)
    assert out.name == "out_sample" and out.shape == ("batch", 4, 16, 16)
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["dtype"] == "float32" and meta["opset"] == 17 and not meta["external_data"]
    assert onnx_content_hash(sdxl_export) == meta["sha256"]


def test_plain_unet_exports_three_inputs(tmp_path):
    unet = tiny_unet(addition_embed_type=None, projection_class_embeddings_input_dim=None)
    path = export_unet_onnx(unet, tmp_path / "plain", seq_len=SEQ)
    assert list(read_onnx_specs(path)[0]) == ["sample", "timestep", "encoder_hidden_states"]
    x, t, cond = inputs(2)
    cond = Condition(cond.prompt_embeds)  # no pooled embeds / time ids: a plain SD-style UNet
    den = UNetDenoiser(unet)
    assert_denoiser_close(OnnxRuntimeDenoiser(path, num_threads=1)(x, t, cond), den, float64_denoiser(den), x, t, cond,
                          name="plain UNet")  # fmt: skip


def test_dynamic_hw_fp16_external_data(tmp_path, tiny_unet_loaded, tiny_denoiser):
    path = export_unet_onnx(tiny_unet_loaded, tmp_path / "fp16", dtype=torch.float16, seq_len=SEQ,
                            dynamic_hw=True, external_data=True)
    assert (path.parent / DATA_FILE).stat().st_size > 100_000  # the weights went to the external file
    assert tiny_unet_loaded.dtype == torch.float32  # the caller's module was copied, not cast
    den = OnnxRuntimeDenoiser(path, num_threads=1)
    assert den.dtype == torch.float16 and den.sample_size == 16
    x, t, cond = inputs(2, size=(24, 32))
    with torch.no_grad():
        ref = tiny_denoiser(x, t, cond)
    out = den(x, t, cond)
    assert out.dtype == torch.float32 and out.shape == (2, 4, 24, 32)
    # fp16 weights and activations: a float16 forward's relative error ≲ UNET_ULPS·eps16 (the fp32 side's is ~10⁴× less)
    assert rel_err(out, ref) < UNET_ULPS * eps(torch.float16)


def test_weights_the_exporter_spilled_are_gathered_into_one_file(sdxl_export, ort_den, tmp_path):
    """Over 2 GB the exporter writes one file per weight; the re-save streams them into model.onnx.data one tensor
    at a time (the full-size SDXL UNet's export, bench/realscale.py). Simulated here: the tiny export spilled."""
    import onnx

    from noisefast.denoisers.onnx_export import _resave

    raw = tmp_path / "raw" / "model.onnx"
    raw.parent.mkdir()
    onnx.save_model(onnx.load(str(sdxl_export)), str(raw), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)  # fmt: skip
    assert len(list(raw.parent.iterdir())) > 10
    weight_bytes, external = _resave(raw, tmp_path / "model.onnx", "auto")
    assert external and (tmp_path / DATA_FILE).stat().st_size >= weight_bytes - 2**16
    session = OnnxRuntimeDenoiser(tmp_path / "model.onnx", num_threads=1)
    x, t, cond = inputs(2)
    assert torch.equal(session(x, t, cond), ort_den(x, t, cond))  # the same graph and weights


def test_reexport_replaces_and_refuses_foreign_folder(tmp_path, tiny_unet_loaded):
    out = tmp_path / "unet"
    first = export_unet_onnx(tiny_unet_loaded, out, seq_len=SEQ, external_data=True)
    assert (out / DATA_FILE).is_file()
    export_unet_onnx(tiny_unet_loaded, out, seq_len=SEQ, external_data=False)  # replaces the export whole
    assert sorted(p.name for p in out.iterdir()) == [MODEL_FILE, META_FILE] and first.is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a noisefast ONNX export"):
        export_unet_onnx(tiny_unet_loaded, foreign, seq_len=SEQ)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_any_prompt_length(ort_den, tiny_denoiser, tiny_denoiser64):
    x, t, _ = inputs(2)
    for seq in (9, 77):
        cond = tiny_condition(2, seq_len=seq).positive()
        assert_denoiser_close(ort_den(x, t, cond), tiny_denoiser, tiny_denoiser64, x, t, cond, name=f"prompt length {seq}")


def test_bad_inputs_name_the_shape(ort_den):
    x, t, cond = inputs(2)
    with pytest.raises(ValueError, match=r"\(2, 4, 8, 8\)"):
        ort_den(torch.randn(2, 4, 8, 8), t, cond)
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        ort_den(x, t, Condition(cond.prompt_embeds))
    with pytest.raises(ValueError, match=r"\[B\]=2"):
        ort_den(x, torch.tensor([1, 2, 3]), cond)


def test_bare_export_refuses_grad(ort_den):
    """A session over an export alone has no torch UNet to differentiate (one built from the model does:
    tests/test_autograd_backends.py)."""
    x, t, cond = inputs(1)
    with pytest.raises(RuntimeError, match="runs the forward only and was built from an export without its torch UNet"):
        ort_den(x.requires_grad_(), t, cond)


def test_export_option_errors(tmp_path, tiny_unet_loaded):
    with pytest.raises(TypeError, match="bfloat16"):
        export_unet_onnx(tiny_unet_loaded, tmp_path / "a", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="opset 13"):
        export_unet_onnx(tiny_unet_loaded, tmp_path / "a", opset=13)
    with pytest.raises(ValueError, match="class_embed_type"):
        export_unet_onnx(tiny_unet(addition_embed_type=None, class_embed_type="timestep"), tmp_path / "a")


def test_cli_exports_a_saved_pipeline_folder(tmp_path, capsys):
    model = tmp_path / "pipe"
    tiny_unet().save_pretrained(model / "unet")  # a pipeline layout: the UNet in unet/
    assert main(["--model", str(model), "--out", str(tmp_path / "out"), "--seq-len", str(SEQ),
                 "--height", "192", "--width", "128", "--static-batch", "3", "--static-seq"]) == 0
    path = tmp_path / "out" / MODEL_FILE
    assert capsys.readouterr().out.strip() == str(path)
    specs = read_onnx_specs(path)[0]
    assert specs["sample"].shape == (3, 4, 24, 16) and specs["encoder_hidden_states"].shape == (3, SEQ, 64)
    den = OnnxRuntimeDenoiser(path, num_threads=1)
    x = torch.randn(3, 4, 24, 16)
    with pytest.raises(ValueError, match=r"'encoder_hidden_states' has shape \(3, 9, 64\).*\(3, 7, 64\)"):
        den(x, torch.tensor(5), tiny_condition(1, seq_len=9).positive())


def test_dynamo_exporter_matches_torch(tmp_path, tiny_unet_loaded, tiny_denoiser, tiny_denoiser64):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    path = export_unet_onnx(tiny_unet_loaded, tmp_path / "dyn", seq_len=SEQ, exporter="dynamo")
    x, t, cond = inputs(3)
    assert_denoiser_close(OnnxRuntimeDenoiser(path, num_threads=1)(x, t, cond), tiny_denoiser, tiny_denoiser64, x, t,
                          cond, name="dynamo export")  # fmt: skip


def test_stability_scores_match_torch_backend(ort_den, tiny_denoiser, tiny_denoiser64):
    from noisefast.schedule import DDIMSchedule
    from noisefast.stability import stability_score
    from noisefast.testing import SDXL_SCHEDULER_CONFIG

    sched = DDIMSchedule.from_config(SDXL_SCHEDULER_CONFIG, 3)
    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = tiny_condition(1, seq_len=SEQ)
    ref = stability_score(tiny_denoiser, sched, noise, cond, guidance_scale=5.5)
    got = stability_score(ort_den, sched, noise, cond, guidance_scale=5.5)
    ref64 = stability_score(tiny_denoiser64, sched, noise.double(), cond.to(dtype=torch.float64), guidance_scale=5.5)
    assert_close_to_reference(got, ref, ref64, name="stability through ORT")
    assert ref.std() > 1e-4  # the candidates' scores differ, so agreement is not trivial
