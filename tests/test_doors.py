"""The same question through every door gets the same answer: `Engine.select`, ``noisefast select`` and
``POST /v1/select`` (same fields, same ranked order); the configuration in effect is what ``/v1/info``, the
CLI report and the screen manifest say."""

import json

import pytest
import torch

from _serve_helpers import P3, run, served
from noisefast.config import EngineConfig

FAST = {"steps": 2, "inversion_steps": 2}
SEEDS = [5, 0, 9, 2, 7, 3]


@pytest.fixture(scope="module")
def engine():
    from noisefast.pipeline import Engine

    return Engine.from_pretrained("builtin:digits", threads=1)


def test_select_is_the_same_through_the_engine_the_cli_and_http(engine, tmp_path, quiet_env, capsys):
    from noisefast.cli import main

    sel = engine.select(P3, SEEDS, **FAST).as_dict()  # ranked, most → least stable

    assert main(["select", "--prompt", P3, "--seeds", ",".join(map(str, SEEDS)), "--steps", "2", "--inversion-steps",
                 "2", "--threads", "1", "--grid", "0", "--json", "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    (cli,) = json.loads(capsys.readouterr().out)["runs"]

    async def go():
        async with served(engine) as c:
            return await c.post("/v1/select", json={"prompt": P3, "seeds": SEEDS, "settings": FAST})

    http = run(go())
    assert http.status_code == 200, http.text
    http = http.json()
    keys = ("seeds", "best_seed", "worst_seed", "complete", "scored", "requested")
    for answer in (cli, http):
        assert {k: answer[k] for k in keys} == {k: sel[k] for k in keys}
        # one UNet batch of 6 rows everywhere, 1 thread: the same floats (the CLI runs in this process too)
        assert answer["scores"] == pytest.approx(sel["scores"], abs=0, rel=0)
        assert answer["prompt"] == P3 and answer["scores"] == sorted(answer["scores"], reverse=True)
    assert set(cli) - {"dir", "images"} == set(http) - {"source"}  # the same fields, HTTP adds only its source


def test_score_keeps_the_order_asked_everywhere(engine):
    async def go():
        async with served(engine) as c:
            return await c.post("/v1/score", json={"prompt": P3, "seeds": SEEDS, "settings": FAST})

    out = run(go()).json()
    assert out["seeds"] == SEEDS
    torch.testing.assert_close(torch.tensor(out["scores"]), engine.score(P3, SEEDS, **FAST), rtol=0, atol=0)


def test_info_manifest_and_report_state_the_configuration_in_effect(tmp_path):
    """``noisefast serve --backend onnxruntime --batch-size 5``: /v1/info says both; the screen manifest the same."""
    pytest.importorskip("onnxruntime")
    from noisefast.pipeline import Engine
    from noisefast.screen import screen

    config = EngineConfig(model="builtin:digits", backend="onnxruntime", batch_size=5, threads=1)
    ort_engine = Engine.from_config(config)

    async def go():
        async with served(ort_engine) as c:
            return await c.get("/v1/info")

    info = run(go()).json()["engine"]
    want = {"model": "builtin:digits", "backend": "onnxruntime", "batch_size": 5, "threads": 1, "device": "cpu",
            "dtype": "float32", "fast_path": None}  # fmt: skip
    assert {k: info[k] for k in want} == want
    screen(["a handwritten digit one"], range(3), tmp_path / "run", engine=ort_engine, **FAST)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert {k: manifest["engine"][k] for k in want} == want
