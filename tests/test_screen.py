"""`noisefast screen`: prompt files, the Parquet schema, equality with `Engine.score`, resume, refusal, cascade."""

import json
import os

import numpy as np
import pytest
import torch

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

from noisefast.errors import InputError  # noqa: E402
from noisefast.screen import load_scores, read_prompt_file, screen, seed_stats  # noqa: E402

PROMPTS = ["a handwritten digit one", "a handwritten digit seven", "a handwritten digit one", "a handwritten digit two"]
FAST = dict(steps=2, inversion_steps=2, batch_size=8)






# --- prompt files (no model) -------------------------------------------------------------------------------
def _parquet(path, table):
    import pyarrow.parquet as pq

    pq.write_table(pa.table(table), path)


GOOD = [
    ("p.txt", "a\n\n  b  \na\n", ["a", "b"]),
    ("p.jsonl", '{"prompt": "a", "id": "x"}\n\n{"prompt": "b", "negative_prompt": "blurry"}\n"c"\n', ["a", "b", "c"]),
    ("p.csv", "id,prompt\n1,a\n2,\n3,b\n", ["a", "b"]),
    ("p.parquet", {"prompt": ["a", None, "b", "a"]}, ["a", "b"]),
    # lines end at \n or \r\n only: U+2028, U+2029, U+0085, \x0b, \x0c, \x1c stay inside a prompt
    ("u2028.txt", "a\u2028b\r\nc\u2029d\x85e\x0bf\x0cg\x1ch\n\ufeffi\n", ["a\u2028b", "c\u2029d\x85e\x0bf\x0cg\x1ch", "\ufeffi"]),
    ("u2028.jsonl", '{"prompt": "a\u2028b", "id": "x"}\r\n{"prompt": "c"}\n', ["a\u2028b", "c"]),  # raw U+2028
    ("bom.txt", "\ufeffa\nb", ["a", "b"]),  # a leading BOM is not part of the first prompt; no final newline
]
BAD = [
    ("p.txt", b"caf\xe9\n", "not UTF-8"),
    ("p.csv", b"prompt\nok\nsecond caf\xe9\n", r"not UTF-8 text: line 3, column 11: byte 0xe9"),
    ("p.txt", b"a\x00b\n", r"not a text file \(a NUL byte on line 1\)"),
    ("p.jsonl", '{"prompt": "a\\udcff"}\n', r"p.jsonl:1: prompt is not valid UTF-8 text \(byte 0xff"),
    ("p.csv", "text\nhello\n", "no 'prompt' column"),
    ("p.parquet", {"text": ["a"]}, "no 'prompt' column"),
    ("p.jsonl", '{"prompt": "a"}\n{oops\n', "p.jsonl:2"),
    ("p.jsonl", '{"text": "a"}\n', '"prompt" key'),
    ("p.jsonl", '{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n', "already used"),
    ("p.txt", "\n\n", "holds no prompts"),
    ("p.yaml", "a\n", "unknown format"),
    ("p.parquet", b"not parquet", "cannot read it as Parquet"),
]


@pytest.mark.parametrize("name,content,expected", GOOD, ids=[g[0] for g in GOOD])
def test_prompt_files(tmp_path, name, content, expected):
    path = tmp_path / name
    if isinstance(content, dict):
        _parquet(path, content)
    else:
        path.write_text(content, encoding="utf-8")
    items = read_prompt_file(path)
    assert [it.prompt for it in items] == expected
    assert len({it.id for it in items}) == len(items)
    assert read_prompt_file(path) == items  # ids are stable


@pytest.mark.parametrize("name,content,message", BAD, ids=[f"{b[0]}-{b[2][:12]}" for b in BAD])
def test_bad_prompt_files(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, dict):
        _parquet(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as e:
        read_prompt_file(path)
    assert "\n" not in str(e.value)



@pytest.fixture(scope="module")
def engine(digits_engine_1thread):
    return digits_engine_1thread

def test_cli_bad_file_and_missing_ray_are_one_line_errors(tmp_path, capsys, monkeypatch, quiet_env):
    from noisefast.cli import main

    bad = tmp_path / "p.txt"
    bad.write_bytes(b"\xff\xfe")
    assert main(["screen", "--prompts", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not UTF-8" in err and "\n" not in err
    good = tmp_path / "q.txt"
    good.write_text("a\n")
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # Ray not installed
    assert main(["screen", "--prompts", str(good), "--out", str(tmp_path / "o"), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "noisefast[ray]" in err and "\n" not in err


# --- the screen itself ---------------------------------------------------------------------------------------
def test_schema_rows_manifest_and_equality_with_engine_score(engine, tmp_path):
    out = tmp_path / "run"
    res = screen(PROMPTS, range(12), out, engine=engine, shard_size=8, **FAST)
    assert res.complete and res.rows == 3 * 12 and res.shards_total == 6
    import pyarrow.dataset

    schema = pyarrow.dataset.dataset(out / "scores").schema
    for name, typ in [("prompt_id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()),
                      ("stability", pa.float64()), ("steps", pa.int32()), ("inversion_steps", pa.int32()),
                      ("guidance_scale", pa.float64()), ("inversion_guidance_scale", pa.float64()),
                      ("height", pa.int32()), ("width", pa.int32()), ("model", pa.string()), ("stage", pa.string())]:
        assert schema.field(name).type == typ, name
    df = pd.read_parquet(out / "scores")
    assert len(df) == 36 and not df.duplicated(["prompt_id", "seed"]).any()
    assert set(df["prompt"]) == set(PROMPTS) and (df["steps"] == 2).all() and (df["model"] == "builtin:digits").all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "builtin:digits" and len(manifest["settings_hash"]) == 64
    assert set(manifest["settings"]) == {"height", "width", "steps", "inversion_steps", "guidance_scale",
                                         "inversion_guidance_scale"}  # fmt: skip
    assert "torch" in manifest["versions"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 36 and len(summary["per_prompt"]) == 3 and (out / "histogram.png").exists()
    assert "| a handwritten digit seven |" in (out / "summary.md").read_text()
    loaded = load_scores(out)
    for prompt in set(PROMPTS):
        part = loaded[loaded["prompt"] == prompt].sort_values("seed")
        ref = engine.score(prompt, list(range(12)), **FAST)
        np.testing.assert_allclose(part["stability"].to_numpy(), ref.double().numpy(), atol=1e-6, rtol=0)
    stats = seed_stats(out)
    assert len(stats) == 12 and (stats["prompts"] == 3).all()
    assert stats["mean_rank"].is_monotonic_increasing


def test_resume_skips_finished_shards_and_is_bit_identical(engine, tmp_path):
    out = tmp_path / "run"
    screen(PROMPTS, range(16), out, engine=engine, shard_size=8, **FAST)
    before = load_scores(out)
    files = sorted((out / "scores").glob("*.parquet"))
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    files[2].unlink()
    (out / ".staging" / "left-by-a-kill.tmp").write_bytes(b"half")
    res = screen(PROMPTS, range(16), out, engine=engine, shard_size=8, **FAST)
    assert res.shards_skipped == len(files) - 1 and res.rows_scored == 8
    assert {f.name: f.stat().st_mtime_ns for f in (out / "scores").glob("*.parquet") if f != files[2]} == \
        {k: v for k, v in stamps.items() if k != files[2].name}  # fmt: skip
    assert not any((out / ".staging").iterdir())
    pd.testing.assert_frame_equal(load_scores(out), before)


def test_rerun_with_other_settings_is_refused_and_force_starts_over(engine, tmp_path, capsys, quiet_env):
    from noisefast.cli import main

    out = tmp_path / "run"
    screen(PROMPTS[:1], range(4), out, engine=engine, **FAST)
    with pytest.raises(InputError, match=r"steps \(was 2, now 3\)"):
        screen(PROMPTS[:1], range(4), out, engine=engine, steps=3, inversion_steps=2, batch_size=8)
    with pytest.raises(InputError, match="seed_count"):
        screen(PROMPTS[:1], range(5), out, engine=engine, **FAST)
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    argv = ["screen", "--prompts", str(prompts), "--seeds", "0:4", "--out", str(out), "--steps", "2",
            "--inversion-steps", "2", "--guidance", "3"]
    assert main(argv) == 2
    assert "guidance_scale (was 2.0, now 3.0)" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    assert (load_scores(out)["guidance_scale"] == 3.0).all() and len(load_scores(out)) == 4


def test_cascade_rescores_each_prompts_proxy_top_at_the_full_schedule(engine, tmp_path):
    out = tmp_path / "run"
    screen(PROMPTS, range(10), out, engine=engine, proxy_steps=1, rescore_top=3, shard_size=8, **FAST)
    proxy, final = load_scores(out, "proxy"), load_scores(out)
    assert len(proxy) == 30 and (proxy["steps"] == 1).all() and (proxy["stage"] == "proxy").all()
    assert len(final) == 9 and (final["steps"] == 2).all() and (final["stage"] == "rescore").all()
    for pid, part in proxy.groupby("prompt_id"):
        top = part.sort_values(["stability", "seed"], ascending=[False, True])["seed"].head(3)
        got = final[final["prompt_id"] == pid]
        assert sorted(got["seed"]) == sorted(top)
        ref = engine.score(got["prompt"].iloc[0], [int(s) for s in got["seed"]], **FAST)
        np.testing.assert_allclose(got["stability"].to_numpy(), ref.double().numpy(), atol=1e-6, rtol=0)
    assert json.loads((out / "summary.json").read_text())["cascade"] == {"proxy_steps": 1, "rescore_top": 3}


def test_prompt_ids_and_negative_prompts_from_jsonl(engine, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "a handwritten digit one", "id": "one"}\n'
                   '{"prompt": "a handwritten digit two", "negative_prompt": "a digit seven"}\n')  # fmt: skip
    out = tmp_path / "run"
    screen(src, [3, 5], out, engine=engine, **FAST)
    df = load_scores(out)
    assert "one" in set(df["prompt_id"]) and df["negative_prompt"].notna().sum() == 2
    assert os.path.exists(out / "summary.md")


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(tmp_path):
    from noisefast.errors import OutputError
    from noisefast.screen.shards import OutDir

    first = OutDir(tmp_path / "run").prepare()
    try:
        with pytest.raises(OutputError, match="being written by another"):
            OutDir(tmp_path / "run").prepare()
    finally:
        first.release()
    OutDir(tmp_path / "run").prepare().release()
