"""Smoke test of bench/bench_flow.py (flow-model scoring vs the stock pipelines) on a tiny size: both ways run, the
hand-written stock-pipeline inversion scores like noisefast, the JSON and markdown are written. No timing asserts."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_flow_runs_and_its_baseline_agrees(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_flow

    bench_flow.main(["--seeds", "2", "--steps", "1", "--size", "32", "--repeats", "1", "--json",
                     str(tmp_path / "f.json"), "--md", str(tmp_path / "f.md")])  # all three families
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["settings"]["seeds"] == 2 and set(saved["families"]) == {"sd3", "flux-dev", "flux-schnell"}
    for r in saved["families"].values():
        assert r["scores_agree"] and set(r["noises_per_second"]) == {"noisefast", "diffusers_batched"}
    assert "| flux-schnell |" in (tmp_path / "f.md").read_text()


def test_noisefast_bench_refuses_flow_models_in_one_line(tiny_flow_folders, quiet_env, capsys):
    from noisefast.cli import main

    assert main(["bench", "scoring", "--model", str(tiny_flow_folders["flux-schnell"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "bench_flow.py" in err and "\n" not in err
