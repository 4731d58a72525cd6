"""Smoke tests of the comparison runner (bench/compare.py and its parts) on tiny sizes: the pieces run, agree
with each other where they must, and write valid JSON + markdown. No timing assertions."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended: an installed noisefast still wins over the source tree

from bench import common  # noqa: E402


def test_summarize_and_spread():
    s = common.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (3.0, 1.0, 5.0, 5)
    assert (s["q1"], s["q3"]) == (2.0, 4.0)
    assert common.spread_pct(s) == pytest.approx(100 * 2 / 3)
    assert common.summarize([7.0]) == {"median": 7.0, "min": 7.0, "q1": 7.0, "q3": 7.0, "max": 7.0, "n": 1}
    with pytest.raises(ValueError, match="at least one sample"):
        common.summarize([])


def test_round_robin_counts_and_order():
    calls = []
    t = common.time_round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in t.items()} == {"a": 3, "b": 3} and all(x >= 0 for v in t.values() for x in v)
    with pytest.raises(ValueError, match="rounds=0"):
        common.time_round_robin({"a": lambda: None}, 0)


def test_md_table_and_strict_json(tmp_path):
    assert common.md_table(["x", "y"], [[1, 2]], "lr") == "| x | y |\n|---|---:|\n| 1 | 2 |"
    with pytest.raises(ValueError, match="columns disagree"):
        common.md_table(["x", "y"], [[1]])
    common.write_json(tmp_path / "a" / "r.json", {"nan": float("nan"), "t": torch.tensor([1.5]), "d": torch.float16})
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"nan": None, "t": [1.5], "d": "torch.float16"}


def test_machine_info_names_versions():
    info = common.machine_info()
    assert info["versions"]["torch"] == torch.__version__ and info["cpu_count"] >= 1
    json.dumps(info)  # JSON-ready as is


def test_unet_calls_count_flops_and_skip_plainly():
    from bench.compare_unet import random_condition, unet_calls
    from noisefast.testing import tiny_unet

    unet = tiny_unet()
    cond = random_condition(unet.config, 2, 64, "cpu", torch.float32)
    assert cond.prompt_embeds.shape == (2, 77, 64) and cond.pooled_prompt_embeds.shape == (2, 32)
    rows, skipped = unet_calls(unet, (64,), (2,), iters=2, peak_tflops=1.0, budget_s=60.0)
    assert not skipped and [r["batch"] for r in rows] == [2]
    for r in rows:
        assert r["count_linear_in_batch"] and r["counted_gflop_per_call"] > 0
        assert r["counted_gflop_per_call"] == pytest.approx(r["batch"] * r["counted_gflop_batch1"])
        assert r["ms_per_call"]["n"] == 2 and r["tflops"] > 0 and r["documented_gflop_per_call"] is None
    rows, skipped = unet_calls(unet, (64,), (1,), iters=2, peak_tflops=1.0, budget_s=0.0)
    assert rows == [] and "budget" in skipped[0]["reason"]


def test_unet_loop_baselines_agree_with_noisefast():
    """The UNet-loop users (per seed and batched) score what stability_score scores."""
    from bench.compare_scoring import scoring_unet_loop
    from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_unet

    for guidance, spacing in ((0.0, "trailing"), (5.0, "leading")):  # Turbo-style without CFG; SDXL with CFG
        res = scoring_unet_loop(tiny_unet(), {**SDXL_SCHEDULER_CONFIG, "timestep_spacing": spacing}, seeds=3,
                                pixels=64, steps=1, inversion_steps=1, guidance=guidance, inversion_guidance=1.0,
                                batch=2, repeats=1)
        assert res["max_abs_score_diff"] < 1e-4 and res["scores_agree"], res
        assert set(res["seconds"]) == {"diffusers_user", "diffusers_batched", "noisefast"}
        assert res["baselines"] == ["diffusers_user", "diffusers_batched"]
        strongest = res["strongest_baseline"]
        assert res["ratio"] == pytest.approx(res["ratio_vs"][strongest]) == pytest.approx(min(res["ratio_vs"].values()))


def test_pipeline_users_batched_and_per_seed_agree(tiny_sdxl):
    """One pipeline call with num_images_per_prompt=K and a generator per seed draws each seed's own noise."""
    from bench.diffusers_users import pipeline_scores

    kw = dict(steps=2, inversion_steps=2, guidance=5.0, inversion_guidance=1.0, height=64, width=64)
    per_seed = pipeline_scores(tiny_sdxl, "a fox", [3, 1, 4], batch=1, **kw)
    batched = pipeline_scores(tiny_sdxl, "a fox", [3, 1, 4], batch=2, **kw)
    assert per_seed.shape == (3,) and (per_seed - batched).abs().max() < 1e-4


def test_compare_cli_writes_json_and_markdown(tmp_path):
    from bench import compare

    j, m = tmp_path / "out.json", tmp_path / "out.md"
    rc = compare.main(["--json", str(j), "--md", str(m), "--quick", "--device", "cpu", "--parts", "unet",
                       "--budget-s", "60"])
    assert rc == 0
    res = json.loads(j.read_text())
    assert res["settings"] == {"device": "cpu", "quick": True, "parts": ["unet"], "budget_s": 60.0, "compile": False}
    assert res["unet"]["rows"] and math.isfinite(res["unet"]["matmul_peak"]["tflops"])
    md = m.read_text()
    assert "4. UNet calls vs the matmul peak" in md and "pending" in md  # no GPU numbers on a CPU run
    with pytest.raises(ValueError, match="unknown parts"):
        compare.run("cpu", True, ["nope"])


def test_compare_records_a_failing_part(tmp_path, monkeypatch):
    from bench import compare

    def boom(device, quick):
        raise RuntimeError("kernel part broke")

    monkeypatch.setattr(compare, "kernels_part", boom)
    rc = compare.main(["--json", str(tmp_path / "o.json"), "--md", str(tmp_path / "o.md"), "--parts", "kernels",
                       "--device", "cpu"])
    assert rc == 1
    assert json.loads((tmp_path / "o.json").read_text())["kernels"]["error"] == "RuntimeError: kernel part broke"
    assert "**failed**" in (tmp_path / "o.md").read_text()


def test_gpu_scoring_records_skips_and_writes_as_it_goes(tmp_path):
    """bench.gpu_scoring --dry-run flow with no time left: every row recorded as skipped, JSON and markdown written."""
    from bench import gpu_scoring

    res = gpu_scoring.run(dry=True, budget_s=0.0, repeats=1, json_path=str(tmp_path / "s.json"), md_path=str(tmp_path / "s.md"))
    assert [(r["config"], r["batch"]) for r in res["rows"]] == [("turbo", 2), ("turbo", 4), ("turbo", 1), ("sdxl", 2),
                                                                ("sdxl", 1), ("sdxl", 4)]
    assert all("budget" in r["skipped"] for r in res["rows"]) and res["headline"] == {}
    assert json.loads((tmp_path / "s.json").read_text())["settings"]["fast_path"]["cuda_graph"] is True
    assert "skipped" in (tmp_path / "s.md").read_text()
    rows = [{"config": "turbo", "batch": 8, "noises_per_second": {"diffusers_batched": 2.0, "noisefast": 3.0,
                                                                  "noisefast_fast": 6.0}},
            {"config": "turbo", "batch": 1, "noises_per_second": {"diffusers_user": 1.0, "noisefast": 1.5,
                                                                  "noisefast_fast": 2.5}}]
    h = gpu_scoring.headline(rows)["turbo"]
    assert (h["noisefast"]["way"], h["strongest_baseline"]["way"], h["ratio"]) == ("noisefast_fast", "diffusers_batched", 3.0)


def test_bench_flow_runs_and_its_baseline_agrees(tmp_path):
    """bench/bench_flow.py on one tiny FLUX.1-schnell pipeline: both ways run, the hand-written stock-pipeline
    inversion scores like noisefast (its own tolerance), the markdown and JSON are written."""
    from bench import bench_flow

    res = bench_flow.run(seeds=2, steps=1, size=32, repeats=1, families=("flux-schnell",))
    r = res["families"]["flux-schnell"]
    assert r["scores_agree"] and set(r["noises_per_second"]) == {"noisefast", "diffusers_batched"}
    common.write_json(tmp_path / "f.json", res)
    assert json.loads((tmp_path / "f.json").read_text())["settings"]["seeds"] == 2
    assert "| flux-schnell |" in bench_flow.markdown(res)
