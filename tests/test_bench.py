"""``noisefast bench``: the results schema round-trips and refuses what it cannot read, ``compare`` names a regression
(and reads the legacy ``bench.compare`` files), the timing and summary helpers, and every subcommand on the tiny
models with ``--quick`` (and smaller knobs) through the command line: each writes a valid JSON result and its
Markdown, and where two implementations score the same seeds their scores agree. No timing assertions."""

import json
import math
import os
from pathlib import Path

import pytest

from noisefast.bench import schema, stats
from noisefast.bench.compare import compare
from noisefast.cli import main

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "bench" / "results" / "cpu-2026-12-04-quiet.json"


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """``--threads 1`` (what these tests pass: 2 spinning threads on a shared 2-core machine run the tiny models
    ~10× slower) is process-wide in torch: give the rest of the suite its count back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def bench(tmp_path, *argv) -> tuple[int, dict, str]:
    """Run ``noisefast bench ARGV --json … --md …`` in process; (exit status, the result read back, the Markdown)."""
    j, m = tmp_path / "r.json", tmp_path / "r.md"
    rc = main(["bench", *argv, "--json", str(j), "--md", str(m)])
    return rc, schema.load(j), m.read_text()


def synthetic(times: dict, statistic: str = "min") -> dict:
    """A finished result holding ``times`` (name → samples in seconds) in group ``g``."""
    run = schema.Run("scoring", {"note": "synthetic"}, device="cpu", statistic=statistic, method="test", warmup=0,
                     rounds=3, argv=["bench", "scoring"])  # fmt: skip
    for name, samples in times.items():
        run.add("g", name, samples, per=4, per_unit="seed")
    return run.finish()


# --- helpers and the schema ---------------------------------------------------------------------------------------
def test_summarize_spread_headline_percentile():
    s = stats.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s["median"], s["min"], s["max"], s["n"], s["q1"], s["q3"]) == (3.0, 1.0, 5.0, 5, 2.0, 4.0)
    assert stats.spread_pct(s) == pytest.approx(100 * 2 / 3)
    assert (stats.headline(s, "min"), stats.headline(s, "median")) == (1.0, 3.0)
    assert stats.summarize([7.0]) == {"median": 7.0, "min": 7.0, "q1": 7.0, "q3": 7.0, "max": 7.0, "n": 1}
    assert stats.percentile([1, 2, 3, 4], 50) == 2.5 and stats.percentile([5], 99) == 5
    with pytest.raises(ValueError, match="at least one sample"):
        stats.summarize([])
    with pytest.raises(ValueError, match="statistic"):
        stats.headline(s, "mean")


def test_round_robin_alternates_after_warmup():
    from noisefast.bench.timing import time_round_robin

    calls = []
    t = time_round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in t.items()} == {"a": 3, "b": 3} and all(x >= 0 for v in t.values() for x in v)
    with pytest.raises(ValueError, match="rounds=0"):
        time_round_robin({"a": lambda: None}, 0)


def test_schema_round_trips_and_refuses_what_it_cannot_read(tmp_path):
    from noisefast.bench.tables import md_table
    from noisefast.errors import InputError

    r = synthetic({"noisefast": [0.5, 0.4, 0.6], "diffusers": [1.2, 1.0, 1.1]})
    r["results"]["ratio"] = float("nan")  # strict JSON: written as null
    assert r["schema"] == schema.SCHEMA and r["finished"] and r["load"]["samples"][0]["at"] == "start"
    assert {"cpu", "cores", "torch_threads", "gpu"} <= set(r["machine"]) and r["versions"]["torch"]
    schema.write(r, tmp_path / "a" / "r.json", tmp_path / "a" / "r.md", "# md")
    back = schema.load(tmp_path / "a" / "r.json")
    assert back == json.loads(json.dumps(r).replace("NaN", "null")) and back["results"]["ratio"] is None
    run = schema.Run("kernels", {}, device="cpu", statistic="min", method="test", warmup=0, rounds=1, argv=[])
    with pytest.raises(ValueError, match="finite"):
        run.add("g", "x", [1.0, float("inf")])
    assert (tmp_path / "a" / "r.md").read_text() == "# md\n"
    for change, message in [(lambda d: d.update(schema="noisefast.bench/2"), "reads"),
                            (lambda d: d.update(schema="other/1"), "not a noisefast bench result"),
                            (lambda d: d["measurements"][0]["summary"].update(median=9.0), "summary does not match"),
                            (lambda d: d["measurements"].append(dict(d["measurements"][0])), "appears twice"),
                            (lambda d: d.pop("timing"), "timing")]:  # fmt: skip
        bad = json.loads((tmp_path / "a" / "r.json").read_text())
        change(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message):
            schema.load(tmp_path / "bad.json")
    with pytest.raises(InputError, match="is not JSON"):
        (tmp_path / "x.json").write_text("{")
        schema.load(tmp_path / "x.json")
    assert md_table(["x", "y"], [[1, 2]], "lr") == "| x | y |\n|---|---:|\n| 1 | 2 |"


def test_compare_names_a_regression_and_not_noise(tmp_path, capsys):
    a = synthetic({"noisefast": [1.00, 1.01, 1.02], "baseline": [2.0, 2.02, 2.04], "noisy": [1.0, 1.5, 2.0],
                   "gone": [1.0]})  # fmt: skip
    b = synthetic({"noisefast": [1.50, 1.51, 1.52], "baseline": [1.0, 1.01, 1.02], "noisy": [1.2, 1.7, 2.2],
                   "new": [1.0]})  # fmt: skip
    c = compare(a, b)
    assert c["regressions"] == ["g · noisefast"] and c["improvements"] == ["g · baseline"] and c["speedups"] == []
    verdicts = {r["key"]: r["verdict"] for r in c["rows"]}
    assert verdicts == {"g · noisefast": "regression", "g · baseline": "improvement", "g · noisy": "unchanged",
                        "g · new": "only in B", "g · gone": "only in A"}  # fmt: skip
    row = next(r for r in c["rows"] if r["key"] == "g · noisefast")
    assert row["ratio"] == pytest.approx(1.5) and row["change_pct"] == pytest.approx(50)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--check"]) == 3
    assert main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "**Regressions:**" in out and "- g · noisefast: +50.0% (slower" in out and "No regression." in out
    # a machine twice as busy slows both members of a pair alike: absolute regressions, the speed-up unchanged
    a = synthetic({"noisefast": [1.00, 1.01, 1.02], "diffusers batched": [3.0, 3.03, 3.06]})
    b = synthetic({"noisefast": [2.00, 2.02, 2.04], "diffusers batched": [6.0, 6.06, 6.12]})
    c = compare(a, b)
    (up,) = c["speedups"]
    assert up["key"] == "speed-up: g · noisefast vs diffusers batched" and up["verdict"] == "unchanged"
    assert up["a"] == pytest.approx(3.0) and sorted(c["regressions"]) == ["g · diffusers batched", "g · noisefast"]
    b = synthetic({"noisefast": [2.00, 2.02, 2.04], "diffusers batched": [3.0, 3.03, 3.06]})
    assert "speed-up: g · noisefast vs diffusers batched" in compare(a, b)["regressions"]


def test_legacy_compare_file_reads_into_the_schema():
    old = schema.load(LEGACY)
    keys = {schema.key(m) for m in old["measurements"]}
    assert {"scoring · noisefast", "scoring · diffusers pipeline batched", "scoring · diffusers UNet loop per seed",
            "kernels cpu float32 8×4×128×128 · ddim_cfg fused"} <= keys  # fmt: skip
    fused = next(m for m in old["measurements"] if m["name"] == "ddim_cfg fused")
    assert fused["summary"]["median"] == pytest.approx(0.790e-3, rel=1e-2)  # 0.790 ms in the old Markdown
    assert old["options"]["settings"]["steps"] == 4 and compare(old, old)["regressions"] == []


# --- the subcommands on the tiny models ---------------------------------------------------------------------------
def test_kernels(tmp_path):
    rc, r, md = bench(tmp_path, "kernels", "--quick", "--shape", "2x4x16x16", "--cases", "ddim_cfg,cosine_fwd_bwd",
                      "--rounds", "2", "--warmup", "1", "--threads", "1")  # fmt: skip
    assert rc == 0 and r["subcommand"] == "kernels" and r["timing"]["statistic"] == "min" and not r["errors"]
    names = [m["name"] for m in r["measurements"]]
    assert names == ["copy", "ddim_cfg eager", "ddim_cfg fused", "cosine_fwd_bwd eager", "cosine_fwd_bwd fused"]
    assert all(len(m["samples"]) == 2 for m in r["measurements"]) and r["results"]["geomean_speedup"] > 0
    assert "| ddim_cfg | 2×4×16×16 | float32 |" in md


def test_scoring_tiny_sdxl_all_users_agree(tmp_path):
    rc, r, md = bench(tmp_path, "scoring", "--quick", "--seeds", "0:2", "--rounds", "1", "--threads", "1")
    assert rc == 0 and not r["errors"], r["errors"]
    res = r["results"]
    # noisefast runs the default backend (auto); eager torch is timed beside it in the same rounds
    assert set(res["noises_per_second"]) == {"noisefast", "noisefast [torch]", "diffusers pipeline per seed",
                                            "diffusers pipeline batched", "diffusers UNet loop per seed",
                                            "diffusers UNet loop batched"}  # fmt: skip
    assert res["scores_agree"] and res["strongest_baseline"] in res["baselines"]
    assert r["engine"]["model"] == "arch:tiny" and r["engine"]["backend"] == "auto"
    assert r["options"]["settings"]["steps"] == 1 and r["options"]["seeds"] == [0, 1]
    assert "noisefast vs the strongest baseline" in md


def test_scoring_pixel_model_through_the_unet_loop(tmp_path, capsys):
    """The UNet-loop users on builtin:digits (CFG 2 denoising, conditional inversion) score what the Engine scores."""
    rc, r, _ = bench(tmp_path, "scoring", "--model", "builtin:digits", "--quick", "--seeds", "0:3", "--rounds", "1",
                     "--users", "batched", "--steps", "2", "--inversion-steps", "2", "--threads", "1")  # fmt: skip
    assert rc == 0 and r["results"]["scores_agree"] and r["options"]["through"] == ["unet"]
    assert list(r["results"]["noises_per_second"]) == ["diffusers UNet loop batched", "noisefast", "noisefast [torch]"]
    assert main(["bench", "scoring", "--model", "builtin:digits", "--through", "pipeline"]) == 2
    assert main(["bench", "scoring", "--variants", "auto"]) == 2  # the engine measured already (the default backend)
    assert main(["bench", "scoring", "--model", "arch:huge"]) == 2
    err = capsys.readouterr().err
    assert "no diffusers pipeline" in err and "that is the engine measured already" in err and "arch:tiny" in err


def test_scoring_matrix_records_skips(tmp_path):
    rc, r, md = bench(tmp_path, "scoring", "--matrix", "--budget-s", "0")
    assert rc == 0 and r["options"]["variants"] == ["fast"]
    assert [(x["config"], x["batch"]) for x in r["results"]["rows"]] == [("turbo", 2), ("turbo", 4), ("turbo", 1),
                                                                         ("sdxl", 2), ("sdxl", 1), ("sdxl", 4)]
    assert all("budget" in x["skipped"] for x in r["results"]["rows"]) and "not measured" in md


def test_optimize(tmp_path):
    rc, r, md = bench(tmp_path, "optimize", "--quick", "--steps", "1", "--iters", "1", "--rounds", "1", "--threads", "1")
    assert rc == 0 and not r["errors"]
    rows = {x["mode"]: x for x in r["results"]["rows"]}
    assert rows["checkpoint"]["saved_bytes"] < rows["plain"]["saved_bytes"]  # one latent per call vs activations
    assert [m["name"] for m in r["measurements"]] == ["checkpoint", "plain"] and "1+1" in md


def test_unet(tmp_path):
    rc, r, md = bench(tmp_path, "unet", "--quick", "--resolutions", "64", "--batches", "2", "--rounds", "2",
                      "--matmul-n", "128", "--threads", "1")  # fmt: skip
    assert rc == 0 and not r["errors"]
    (row,) = r["results"]["rows"]
    assert row["count_linear_in_batch"] and row["counted_gflop_per_call"] == pytest.approx(2 * row["counted_gflop_batch1"])
    assert math.isfinite(r["results"]["matmul_peak"]["tflops"]) and row["pct_of_matmul_peak"] > 0
    rc, r, _ = bench(tmp_path, "unet", "--quick", "--resolutions", "64", "--batches", "1", "--budget-s", "0",
                     "--matmul-n", "64")  # fmt: skip
    assert rc == 0 and r["results"]["rows"] == [] and "budget" in r["results"]["skipped"][0]["reason"]


def test_serve_against_a_running_server_counts_non_2xx_as_errors(tmp_path, capsys):
    from noisefast.bench.serve import start_server, stop_server
    from noisefast.config import EngineConfig

    assert main(["bench", "serve", "--url", "http://127.0.0.1:9", "--backend", "compile"]) == 2
    assert "drop --backend" in capsys.readouterr().err
    proc, url = start_server(EngineConfig(threads=1), ["--max-seeds", "8"], timeout_s=300)
    try:
        rc, r, md = bench(tmp_path, "serve", "--url", url, "--quick", "--concurrency", "2", "--duration", "1",
                          "--seeds-per-request", "2", "--steps", "1", "--inversion-steps", "1")  # fmt: skip
        assert rc == 0 and r["engine"]["model"] == "builtin:digits" and r["results"]["url"] == url
        (level,) = r["results"]["levels"]
        assert level["requests"] > 0 and level["errors"] == {} and level["p50_s"] > 0 and level["steady"]
        assert [m["name"] for m in r["measurements"]] == ["latency", "throughput"]
        rc, r, _ = bench(tmp_path, "serve", "--url", url, "--quick", "--concurrency", "1", "--duration", "1",
                         "--seeds-per-request", "9")  # over the server's --max-seeds: every answer is a 422
        (level,) = r["results"]["levels"]
        assert rc == 0 and level["requests"] == 0 and level["errors"].get("422", 0) > 0
    finally:
        stop_server(proc)


def test_serve_flags_rebuild_the_engine_config():
    import argparse

    from noisefast.bench.serve import engine_argv
    from noisefast.config import EngineConfig, FastPathOptions

    for config in (EngineConfig(), EngineConfig(model="m", device="cpu", dtype="bf16", backend="onnxruntime",
                                                variant="fp16", family="sdxl-turbo", batch_size=3, threads=2,
                                                strict=True, fast_path=FastPathOptions(channels_last=True,
                                                                                       attention="sdpa")),
                   EngineConfig(fast_path=FastPathOptions.turbo())):  # fmt: skip
        p = argparse.ArgumentParser()
        EngineConfig.add_cli_args(p)
        assert EngineConfig.from_cli_args(p.parse_args(engine_argv(config))) == config


def test_screen_in_process(tmp_path):
    rc, r, md = bench(tmp_path, "screen", "--quick", "--prompts", "2", "--seeds", "0:4", "--steps", "1",
                      "--inversion-steps", "1")  # fmt: skip
    assert rc == 0 and not r["errors"] and r["results"]["rows"] == 8
    assert set(r["results"]["variants"]) == {"screen", "select loop"} and "screen / select loop" in md


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NOISEFAST_SLOW") != "1", reason="Ray start-up: set NOISEFAST_SLOW=1")
def test_screen_on_ray(tmp_path):
    rc, r, _ = bench(tmp_path, "screen", "--quick", "--prompts", "2", "--seeds", "0:4", "--steps", "1",
                     "--inversion-steps", "1", "--ray")  # fmt: skip
    assert rc == 0 and "ray" in r["results"]["variants"] and "ray_overhead_pct_wall" in r["results"]


@pytest.mark.parametrize("g, gi", [(0.0, 0.0), (5.0, 0.5)])
def test_unet_loop_user_follows_noisefast_guidance_rule(tiny_denoiser, g, gi):
    """The users' inversion mixes ``m_u + w·(m_c − m_u)`` as noisefast does (0: the unconditional half alone; 0.5: a
    mix); denoising guides only above 1 (the pipeline's rule). Same scores as `stability_score`, trailing spacing."""
    from noisefast.bench.scoring import score_tolerance
    from noisefast.bench.users import Embeds, unet_loop_scores
    from noisefast.schedule import DDIMSchedule
    from noisefast.seeds import noise_from_seeds
    from noisefast.stability import stability_score
    from noisefast.testing import SDXL_SCHEDULER_CONFIG, tiny_condition

    config = {**SDXL_SCHEDULER_CONFIG, "timestep_spacing": "trailing"}
    cond = tiny_condition()
    ours = stability_score(tiny_denoiser, DDIMSchedule.from_config(config, 2, 2), noise_from_seeds([3, 1], (4, 8, 8)),
                           cond, g, gi)  # fmt: skip
    theirs = unet_loop_scores(tiny_denoiser.unet, config, [3, 1], Embeds.from_condition(cond), shape=(4, 8, 8), steps=2,
                              inversion_steps=2, guidance=g, inversion_guidance=gi, batch=2)  # fmt: skip
    assert (ours - theirs).abs().max() <= score_tolerance(ours.dtype, 4)


def test_a_failing_part_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    from noisefast.bench import kernels

    def broken(shape, dtype, device):
        raise RuntimeError("this op broke")

    monkeypatch.setitem(kernels.CASES, "cosine", (2, broken, broken))
    rc, r, md = bench(tmp_path, "kernels", "--shape", "2x4x8x8", "--shape", "1x4x8x8", "--cases", "ddim_cfg,cosine",
                      "--rounds", "1", "--warmup", "0")  # fmt: skip
    assert rc == 1 and set(r["errors"]) == {"kernels cpu float32 2×4×8×8", "kernels cpu float32 1×4×8×8"}
    assert "RuntimeError: this op broke" in r["errors"]["kernels cpu float32 2×4×8×8"] and "**failed parts**" in md
    assert [x["case"] for x in r["results"]["rows"]] == ["ddim_cfg", "ddim_cfg"]  # measured before each failure
    rc = main(["bench", "show", str(tmp_path / "r.json"), "--md", str(tmp_path / "again.md")])
    assert rc == 0 and (tmp_path / "again.md").read_text() == md


@pytest.mark.parametrize("sub", ["scoring", "optimize", "unet", "screen"])
def test_every_engine_flag_reaches_the_bench_engine(sub, monkeypatch, tmp_path):
    """``noisefast bench`` builds its Engine from the same `EngineConfig` as every other door (tests/test_config.py)."""
    from test_config import FLAGS

    from noisefast.config import EngineConfig
    from noisefast.pipeline import Engine

    seen = []

    def capture(cls, config):
        seen.append(config)
        raise KeyboardInterrupt  # stop before loading anything (exit 130: nothing was measured)

    monkeypatch.setattr(Engine, "from_config", classmethod(capture))
    monkeypatch.chdir(tmp_path)  # the interrupted runs still write their (empty) results: default names, here
    for flag, expected in FLAGS:
        seen.clear()
        assert main(["bench", sub, "--model", "builtin:digits", *flag]) == 130
        assert seen == [EngineConfig(**{"model": "builtin:digits", **expected})], flag
    assert len(list(tmp_path.glob("noisefast-bench-*.json"))) == len(list(tmp_path.glob("*.md"))) == len(FLAGS)


def test_full_size_architecture_wiring(monkeypatch, tmp_path):
    """arch:sdxl-turbo's pipeline (the SDXL UNet config — shrunk here to CPU size, same cross-attention and added-
    condition widths — with text encoders of SDXL's widths and SDXL's Euler scheduler config, trailing): the Engine
    and every diffusers user score the same."""
    from noisefast.bench import models
    from noisefast.bench.scoring import diffusers_ways, score_tolerance
    from noisefast.config import EngineConfig

    small = dict(models.sdxl_unet_config(), block_out_channels=[32, 64, 64], transformer_layers_per_block=[0, 1, 1],
                 attention_head_dim=[2, 4, 4], norm_num_groups=8, layers_per_block=1, sample_size=16)  # fmt: skip
    monkeypatch.setattr(models, "sdxl_unet_config", lambda: small)
    engine = models.open_engine(EngineConfig(model="arch:sdxl-turbo", threads=1), tmp_path)
    assert engine.describe()["family"] == "sdxl-turbo" and engine.model.pipe.scheduler.config.timestep_spacing == "trailing"
    assert models.engine_record(engine, EngineConfig(model="arch:sdxl-turbo"))["model"] == "arch:sdxl-turbo"
    s = engine.settings(height=64, width=64)
    ours = engine.score("a fox", [0, 1], settings=s).double()
    for name, way in diffusers_ways(engine.model, "a fox", [0, 1], s, 2, ["batched"], ["pipeline", "unet"]).items():
        assert (way().double() - ours).abs().max() <= score_tolerance(engine.dtype, 2), name
