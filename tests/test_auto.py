"""``backend="auto"``: the decision, its cache (shared across processes, rebuilt when damaged), what it records."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from noisefast.denoisers.auto import MARGIN, AutoDenoiser, bucket, choose  # noqa: E402
from noisefast.denoisers.cache import module_fingerprint  # noqa: E402
from noisefast.testing import tiny_condition, tiny_unet  # noqa: E402

SEQ = 7
CHILD = """
import json, sys, torch
torch.set_num_threads(1)
import noisefast as nf
e = nf.Engine.from_pretrained("builtin:digits", cache_dir=sys.argv[1], threads=1)
s = e.score("a handwritten digit two", seeds=range(5), steps=2, inversion_steps=2)
print(json.dumps({"info": e.backend_info(), "scores": s.tolist()}))
"""


def _child(cache):
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    out = subprocess.run([sys.executable, "-c", CHILD, str(cache)], env=env, capture_output=True, text=True,
                         timeout=300, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_reuses_the_decision_and_the_export(tmp_path):
    cache = tmp_path / "cache"
    first = _child(cache)
    info = first["info"]
    assert info["backend"] == "auto" and set(info["candidates"]) == {"torch", "onnxruntime"}
    assert "compile" in info["excluded"] and "measured" in info["excluded"]["compile"]
    decisions = info["decisions"]  # 5 seeds: denoising with CFG (10 rows, bucket 16), inversion conditional (5, 8)
    assert sorted(d["shape"]["rows_bucket"] for d in decisions) == [8, 16]
    for d in decisions:
        assert d["source"] == "measured" and d["chosen"] in ("torch", "onnxruntime")
        assert set(d["ms_per_call"]) == {"torch", "onnxruntime"} and all(d["ms_per_call"].values())
    assert info["artefacts"]["onnxruntime"]["exported_now"] is True
    export = next((cache / "onnx").iterdir())
    stamps = {p.name: p.stat().st_mtime_ns for p in export.iterdir()}

    second = _child(cache)  # a new process: the decisions and the export come from the cache
    again = second["info"]["decisions"]
    assert [d["source"] for d in again] == ["cache", "cache"]
    assert [(d["chosen"], d["ms_per_call"]) for d in again] == [(d["chosen"], d["ms_per_call"]) for d in decisions]
    if any(d["chosen"] == "onnxruntime" for d in again):
        assert second["info"]["artefacts"]["onnxruntime"]["exported_now"] is False
    assert {p.name: p.stat().st_mtime_ns for p in export.iterdir()} == stamps  # not exported again
    assert second["scores"] == first["scores"]  # the same backend on both sides: bit for bit


def _call(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 16, 16, generator=g), torch.full((batch,), 500), tiny_condition(batch, seq_len=SEQ).positive()


def test_a_damaged_decision_or_export_is_rebuilt_not_trusted(tmp_path):
    unet = tiny_unet(seed=3).eval()
    x, t, cond = _call()
    den = AutoDenoiser(unet, cache_dir=tmp_path, threads=1)
    with torch.no_grad():
        out = den(x, t, cond)
    assert den.decisions[next(iter(den.decisions))].source == "measured"
    (entry,) = (tmp_path / "auto").iterdir()
    (export,) = (tmp_path / "onnx").iterdir()
    # a torn decision and a truncated export (as a crash or a full disk would leave them)
    entry.write_text('{"key": "')
    model = export / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    again = AutoDenoiser(unet, cache_dir=tmp_path, threads=1)
    with torch.no_grad():
        out2 = again(x, t, cond)
    (d,) = again.decisions.values()
    assert d.source == "measured" and again.artefacts["onnxruntime"]["exported_now"] is True
    assert json.loads(entry.read_text())["chosen"] == d.chosen  # the decision is written again, whole
    assert out.shape == out2.shape and torch.isfinite(out2).all()


def test_another_model_or_shape_is_another_decision(tmp_path):
    a, b = tiny_unet(seed=3).eval(), tiny_unet(seed=4).eval()
    assert module_fingerprint(a) != module_fingerprint(b)
    assert module_fingerprint(a) == module_fingerprint(tiny_unet(seed=3).eval())  # weights, not identity
    den = AutoDenoiser(a, cache_dir=tmp_path, threads=1, candidates=["torch"])
    with torch.no_grad():
        for batch in (3, 4, 5):  # buckets 4, 4, 8
            den(*_call(batch))
    assert sorted(d.shape["rows_bucket"] for d in den.decisions.values()) == [4, 8]
    assert {d.source for d in den.decisions.values()} == {"only candidate"}  # nothing to time, nothing cached
    with torch.no_grad():
        a.conv_in.weight.add_(1.0)  # weights changed in place: another fingerprint
    assert module_fingerprint(a) != module_fingerprint(tiny_unet(seed=3).eval())


def test_choice_rule_prefers_eager_within_the_margin():
    assert choose({"torch": 100.0, "onnxruntime": 80.0}) == "onnxruntime"
    assert choose({"torch": 100.0, "onnxruntime": 100 * (1 - MARGIN) + 0.1}) == "torch"
    assert choose({"torch": 100.0, "onnxruntime": None, "compile": 50.0}) == "compile"
    assert [bucket(n) for n in (1, 2, 3, 64, 65, 128)] == [1, 2, 4, 64, 128, 128]


def test_gradients_bypass_the_choice(tmp_path):
    unet = tiny_unet(seed=3).eval()
    den = AutoDenoiser(unet, cache_dir=tmp_path, threads=1)
    x, t, cond = _call()
    x = x.requires_grad_()
    (g,) = torch.autograd.grad(den(x, t, cond).square().sum(), x)
    assert not den.decisions and torch.isfinite(g).all()  # eager torch ran it; nothing was timed
    with pytest.raises(ValueError, match="auto cannot try \\['compile'\\] here"):
        AutoDenoiser(unet, cache_dir=tmp_path, candidates=["compile"])
