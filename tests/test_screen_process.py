"""`noisefast screen` across processes: kill -9 at random moments then resume (exactly once, identical scores),
and the same shards on a local Ray instance (rows equal bit for bit)."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

from noisefast.screen import load_scores, screen  # noqa: E402

PROMPTS = [f"a handwritten digit {d}" for d in ("zero", "one", "two", "three")]
FAST = dict(steps=2, inversion_steps=2, batch_size=8)
CHILD = """
import sys, torch
torch.set_num_threads(1)
import noisefast
noisefast.screen({prompts!r}, range({seeds}), sys.argv[1], model="builtin:digits", shard_size=8, **{fast!r})
"""





@pytest.fixture(scope="module")
def engine(digits_engine_1thread):
    return digits_engine_1thread

def _child_env():
    return dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")


def _screen_in_child(prompts, seeds, out):
    """The job in a fresh process (1 thread, the default ISA level): the environment every Ray actor and killed
    child also has. Bit-for-bit equality is a property of one environment — another torch thread count or
    CPU ISA level rounds the UNet's matmuls differently (~1e-7) — so references are made in the same one."""
    code = CHILD.format(prompts=prompts, seeds=seeds, fast=FAST)
    subprocess.run([sys.executable, "-c", code, str(out)], env=_child_env(), check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def _rows(out):
    df = load_scores(out)
    return df[["prompt_id", "prompt", "seed", "stability", "stage", "steps"]]


def test_kill_9_at_random_moments_then_resume_gives_every_row_once(engine, tmp_path):
    seeds = 16
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    _screen_in_child(PROMPTS, seeds, ref_out)
    code = CHILD.format(prompts=PROMPTS, seeds=seeds, fast=FAST)
    rng = random.Random(13)
    env = _child_env()
    deadline = time.monotonic() + 240
    kills = 0
    for _ in range(3):
        n_before = len(list((out / "scores").glob("*.parquet"))) if (out / "scores").exists() else 0
        child = subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        # wait until it is scoring (a new shard lands), then kill at a random moment within the next shards
        while time.monotonic() < deadline and child.poll() is None:
            if (out / "scores").exists() and len(list((out / "scores").glob("*.parquet"))) > n_before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait()
    assert kills >= 1, "the child finished before any kill: make the job larger"
    done_before = len(list((out / "scores").glob("*.parquet")))
    _screen_in_child(PROMPTS, seeds, out)  # the same command again: resumes
    assert done_before >= 1
    res = screen(PROMPTS, range(seeds), out, engine=engine, shard_size=8, **FAST)  # nothing left: all skipped
    assert res.complete and res.rows_scored == 0 and res.shards_skipped == res.shards_total
    got, want = _rows(out), _rows(ref_out)
    assert not got.duplicated(["prompt_id", "seed"]).any() and len(got) == len(PROMPTS) * seeds
    pd.testing.assert_frame_equal(got, want)  # bit for bit
    assert not any((out / ".staging").iterdir())


def test_ray_local_rows_equal_in_process_rows_bit_for_bit(engine, tmp_path):
    ray = pytest.importorskip("ray")
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    except Exception as e:  # pragma: no cover - a machine where Ray cannot start
        pytest.skip(f"Ray cannot start here: {e}")
    try:
        local, remote = tmp_path / "local", tmp_path / "ray"
        _screen_in_child(PROMPTS[:3], 16, local)
        res = screen(PROMPTS[:3], range(16), remote, model="builtin:digits", ray=True, threads=1, shard_size=8, **FAST)
        assert res.summary["executor"] == "ray" and res.summary["workers"] == 2
        pd.testing.assert_frame_equal(_rows(remote), _rows(local))
        # resuming a Ray run in process (and back) is the same protocol: nothing left to do
        again = screen(PROMPTS[:3], range(16), remote, engine=engine, shard_size=8, **FAST)
        assert again.rows_scored == 0 and again.shards_skipped == again.shards_total
    finally:
        ray.shutdown()
