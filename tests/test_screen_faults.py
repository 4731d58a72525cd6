"""`noisefast screen` under faults: damaged shards are moved aside and rescored (the dataset equals an uninterrupted
run bit for bit), filesystem faults are one line naming the path (exit 2) and the rerun after the fix writes every row
exactly once, a changed batch size is refused, an unfinished run is never ranked silently.

Faults are simulated at the OS boundary in process (os.open / os.replace / os.fsync raising EROFS / ENOSPC); where
this machine allows an unprivileged mount namespace (``unshare -rm``), the same faults are also produced for real —
a read-only bind mount and a 64 KiB tmpfs — in one child process."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

from noisefast.errors import InputError, OutputError  # noqa: E402
from noisefast.screen import load_scores, screen, seed_stats  # noqa: E402

PROMPTS = ["a handwritten digit one", "a handwritten digit seven"]
FAST = dict(steps=1, inversion_steps=1, batch_size=4)
SEEDS = range(8)  # 2 prompts × 8 seeds, shards of 4 rows: 4 shards


@pytest.fixture(scope="module")
def engine(digits_engine_1thread):
    return digits_engine_1thread


@pytest.fixture(scope="module")
def reference(engine, tmp_path_factory):
    """The uninterrupted run every repaired run must equal, bit for bit (same process, same environment)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    screen(PROMPTS, SEEDS, out, engine=engine, shard_size=4, **FAST)
    return load_scores(out)


def _run(engine, out, **kw):
    return screen(PROMPTS, SEEDS, out, engine=engine, shard_size=4, **(FAST | kw))


def _assert_exactly_once_and_equal(out, reference):
    df = load_scores(out)
    assert df.attrs["complete"] is True and df.attrs["shards_missing"] == 0
    assert not df.duplicated(["prompt_id", "seed"]).any() and len(df) == len(PROMPTS) * len(SEEDS)
    pd.testing.assert_frame_equal(df, reference)  # every column, bit for bit


def _flip_a_stability_bit(path):
    import pyarrow.parquet as pq

    value = pq.read_table(path).column("stability").to_numpy()[1].tobytes()
    raw = bytearray(path.read_bytes())
    at = raw.find(value)
    assert at >= 0, "the stability value is not stored verbatim in this Parquet file"
    raw[at] ^= 0x01  # the lowest mantissa bit: the file still parses, one score is off by 1 ulp
    path.write_bytes(bytes(raw))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage": lambda p: p.write_bytes(b"not a parquet file " * 8),
    "zero-byte": lambda p: p.write_bytes(b""),
    "bit-flipped": _flip_a_stability_bit,
}


def test_damaged_shards_are_quarantined_and_rescored(engine, reference, tmp_path, capsys):
    out = tmp_path / "run"
    _run(engine, out)
    shards = sorted((out / "scores").glob("*.parquet"))
    for (kind, damage), path in zip(DAMAGE.items(), shards):
        damage(path)
    half = load_scores(out)  # a reader before the repair: the damaged shards are not trusted, and it says so
    assert half.attrs["complete"] is False and len(half.attrs["shards_untrusted"]) == 4
    with pytest.raises(InputError, match="unfinished screen"):
        seed_stats(out)
    capsys.readouterr()
    res = _run(engine, out)
    notices = [ln for ln in capsys.readouterr().err.splitlines() if "cannot be trusted" in ln]
    assert len(notices) == 4 and res.shards_skipped == 0 and res.rows_scored == len(PROMPTS) * len(SEEDS)
    for line, path in zip(notices, shards):
        assert str(path) in line and str(out / "quarantine") in line
    assert any("checksum" in ln for ln in notices) and any("unreadable" in ln for ln in notices)
    assert len(list((out / "quarantine").iterdir())) == 4 and len(res.quarantined) == 4
    _assert_exactly_once_and_equal(out, reference)


def test_a_stray_damaged_file_is_swept_and_staging_entries_are_cleaned(engine, reference, tmp_path):
    out = tmp_path / "run"
    _run(engine, out)
    (out / "scores" / "copied-by-hand.parquet").write_bytes(b"junk")
    (out / ".staging" / "left-by-a-kill").mkdir()
    (out / ".staging" / "left-by-a-kill" / "part.tmp").write_bytes(b"half")
    (out / ".summary.md.999999999.0123abcd.tmp.md").write_text("half a summary")  # a kill during the summary write
    (out / ".summary.json.k3j4h5g6.tmp.json").write_text("{")  # noisefast <= 0.2's temporary name
    res = _run(engine, out)
    assert res.rows_scored == 0 and res.complete
    assert not any((out / ".staging").iterdir())
    assert not list(out.glob(".summary.*")) and (out / "summary.md").is_file()
    assert [p.name for p in (out / "quarantine").iterdir()] == ["scores-copied-by-hand.parquet.bad"]
    _assert_exactly_once_and_equal(out, reference)


def test_resume_with_another_batch_size_is_refused_naming_it(engine, tmp_path):
    out = tmp_path / "run"
    _run(engine, out)
    (out / "scores" / sorted(os.listdir(out / "scores"))[0]).unlink()  # a half-finished run
    with pytest.raises(InputError, match=r"batch_size \(was 4, now 2\)") as e:
        _run(engine, out, batch_size=2)
    assert "\n" not in str(e.value) and "scores depend on" in str(e.value)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["batch_size"] == 4 and manifest["plan"] == {"scores": {"shards": 4, "rows": 16}}


def test_summary_and_readers_of_an_unfinished_run(engine, tmp_path, capsys, quiet_env):
    from noisefast.cli import main
    from noisefast.screen.summary import run_status
    from noisefast.serve.bank import SeedBank

    out = tmp_path / "run"
    _run(engine, out)
    for f in sorted((out / "scores").glob("*.parquet"))[1:]:
        f.unlink()  # as after a kill: 1 of 4 shards finished
    df = load_scores(out)
    assert df.attrs["complete"] is False and df.attrs["shards_missing"] == 3 and len(df) == 4
    assert run_status(out)["complete"] is False
    with pytest.raises(InputError, match="3 of 4 shards missing"):
        load_scores(out, partial=False)
    assert main(["screen", "--summary", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unfinished screen" in err and "3 of 4 shards missing" in err and "\n" not in err
    assert main(["screen", "--summary", str(out), "--partial"]) == 0
    assert capsys.readouterr().out.startswith("UNFINISHED RUN (3 of 4 shards missing)")
    bank = SeedBank.load(out)
    assert bank.complete is False and bank.lookup_any([0, 1], engine.settings(**FAST)) is None


# --- filesystem faults, simulated at the OS boundary --------------------------------------------------------
def _inside(path, folder) -> bool:
    return Path(os.fsdecode(path)).resolve().parent == Path(folder).resolve()


def test_read_only_scores_is_one_line_then_the_fixed_rerun_finishes(engine, reference, tmp_path, monkeypatch, capsys,
                                                                    quiet_env):  # fmt: skip
    from noisefast.cli import main

    out = tmp_path / "run"
    _run(engine, out)
    for f in sorted((out / "scores").glob("*.parquet"))[2:]:
        f.unlink()
    real_open, real_replace = os.open, os.replace

    def ro_open(path, flags, *a, **k):
        if flags & os.O_CREAT and _inside(path, out / "scores"):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
        return real_open(path, flags, *a, **k)

    def ro_replace(src, dst, *a, **k):
        if _inside(dst, out / "scores"):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(src), os.fsdecode(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "replace", ro_replace)
    with pytest.raises(OutputError, match=f"cannot write to {out / 'scores'}: read-only file system"):
        _run(engine, out)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    argv = ["screen", "--prompts", str(prompts), "--seeds", "0:8", "--out", str(out), "--shard-size", "4",
            "--steps", "1", "--inversion-steps", "1", "--batch-size", "4", "--threads", "1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert str(out / "scores") in err and "read-only" in err and "\n" not in err and "internal error" not in err
    monkeypatch.undo()  # the fix
    res = _run(engine, out)
    assert res.rows_scored == 8 and res.shards_skipped == 2
    _assert_exactly_once_and_equal(out, reference)


def test_full_disk_is_one_line_then_the_fixed_rerun_finishes(engine, reference, tmp_path, monkeypatch):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell which file an fsync is for")
    out = tmp_path / "run"
    real_fsync, shards_synced = os.fsync, []

    def full_after_two_shards(fd):
        if "/.staging/" in os.readlink(f"/proc/self/fd/{fd}"):
            if len(shards_synced) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")  # as a real fsync reports it: no path
            shards_synced.append(fd)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_after_two_shards)
    with pytest.raises(OutputError, match=r"cannot write the shard .*/scores/full-.*\.parquet: no space left") as e:
        _run(engine, out)
    assert "rerun the same command to resume" in str(e.value) and "\n" not in str(e.value)
    assert len(list((out / "scores").glob("*.parquet"))) == 2 and not any((out / ".staging").iterdir())
    monkeypatch.undo()
    res = _run(engine, out)
    assert res.shards_skipped == 2 and res.rows_scored == 8
    _assert_exactly_once_and_equal(out, reference)


def test_a_staging_entry_that_cannot_be_removed_is_named(engine, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _run(engine, out)
    stuck = out / ".staging" / "stuck"
    stuck.mkdir()

    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    monkeypatch.setattr(shutil, "rmtree", denied)
    with pytest.raises(OutputError, match=f"cannot remove the stale staging entry {stuck}: permission denied") as e:
        _run(engine, out)
    assert "remove it by hand" in str(e.value)
    monkeypatch.undo()
    assert _run(engine, out).rows_scored == 0 and not stuck.exists()
    _assert_exactly_once_and_equal(out, reference)


# --- the same faults for real, where a mount namespace is allowed -------------------------------------------
REAL = textwrap.dedent("""
    import contextlib, io, json, subprocess, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from noisefast.cli import main
    from noisefast.screen import load_scores

    root, prompts = Path(sys.argv[1]), sys.argv[2]
    def sh(*cmd):
        subprocess.run(cmd, check=True)
    def screen(out, seeds):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["screen", "--prompts", prompts, "--seeds", seeds, "--out", str(out), "--shard-size", "40",
                         "--steps", "1", "--inversion-steps", "1", "--batch-size", "40", "--threads", "1"])
        return code, err.getvalue()
    def rows(out):
        df = load_scores(out)
        return [len(df), bool(df.duplicated(["prompt_id", "seed"]).any()), df.attrs["complete"]]
    res = {}
    ro = root / "ro"
    (ro / "scores").mkdir(parents=True)
    sh("mount", "--bind", str(ro / "scores"), str(ro / "scores"))
    sh("mount", "-o", "remount,bind,ro", str(ro / "scores"))
    res["ro"] = screen(ro, "0:8")
    sh("umount", str(ro / "scores"))
    res["ro_fixed"] = screen(ro, "0:8") + (rows(ro),)
    full = root / "full"
    full.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full))
    res["full"] = screen(full / "run", "0:200")
    sh("mount", "-o", "remount,size=8m", str(full))
    res["full_fixed"] = screen(full / "run", "0:200") + (rows(full / "run"),)
    sh("umount", str(full))
    print(json.dumps(res))
""")


def _mount_namespace_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _mount_namespace_works(),
                    reason="no unprivileged mount namespace here (the simulated faults above still run)")
def test_real_read_only_mount_and_full_tmpfs(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", REAL,
                           str(tmp_path), str(prompts)], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    code, err = res["ro"]
    assert code == 2 and f"cannot write to {tmp_path / 'ro' / 'scores'}: read-only file system" in err, err
    assert len(err.strip().splitlines()) == 1
    assert res["ro_fixed"][0] == 0 and res["ro_fixed"][2] == [16, False, True]
    code, err = res["full"]
    assert code == 2 and "no space left on the device" in err and str(tmp_path / "full" / "run") in err, err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err
    assert res["full_fixed"][0] == 0 and res["full_fixed"][2] == [400, False, True]


def test_a_folder_from_noisefast_0_2_resumes_and_its_shards_are_sealed(engine, reference, tmp_path, capsys):
    """Format 1 (noisefast <= 0.2.0): no plan, no engine pins in ``run``, shards without a checksum. The resume keeps
    the shards whose rows are the planned ones (sealing them), rescores the rest, and records the plan."""
    import pyarrow.parquet as pq

    out = tmp_path / "run"
    _run(engine, out)
    m = json.loads((out / "manifest.json").read_text())
    for key in ("batch_size", "backend", "device", "variant", "fast_path"):
        del m["run"][key]
    del m["plan"]
    (out / "manifest.json").write_text(json.dumps(m | {"format": "noisefast-screen/1"}))
    files = sorted((out / "scores").glob("*.parquet"))
    for f in files:
        pq.write_table(pq.read_table(f).replace_schema_metadata(None), f)  # as 0.2 wrote them
    files[0].unlink()
    assert load_scores(out).attrs["complete"] is None  # no plan: completeness unknown, not claimed
    capsys.readouterr()
    res = _run(engine, out)
    assert res.rows_scored == 4 and res.shards_skipped == 3
    assert capsys.readouterr().err.count("written by an older noisefast without a checksum") == 3
    assert json.loads((out / "manifest.json").read_text())["plan"] == {"scores": {"shards": 4, "rows": 16}}
    _assert_exactly_once_and_equal(out, reference)


def test_force_starts_over_even_from_a_damaged_manifest(engine, reference, tmp_path):
    out = tmp_path / "run"
    _run(engine, out)
    (out / "manifest.json").write_text("[1, 2")
    with pytest.raises(InputError, match="manifest.json: cannot read it .* use --force"):
        _run(engine, out)
    assert _run(engine, out, force=True).rows_scored == 16
    _assert_exactly_once_and_equal(out, reference)


def test_summary_of_a_read_only_folder_still_prints(engine, tmp_path, monkeypatch, capsys, quiet_env):
    """``--summary`` of a bank folder the user cannot write (another account's, a read-only mount): the statistics
    print, and the first line says seed_stats.csv could not be written and why."""
    from noisefast.cli import main

    out = tmp_path / "run"
    _run(engine, out)
    real_open = os.open

    def ro_open(path, flags, *a, **k):
        if flags & os.O_CREAT and _inside(path, out):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    assert main(["screen", "--summary", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert f"{out / 'seed_stats.csv'} not written" in first and "read-only file system" in first
    assert not (out / "seed_stats.csv").exists()
