"""What trusting only verified shards costs a reader: `read_stage` (parse + SHA-256 over every column of every shard)
vs a plain ``pyarrow.dataset`` read of the same ``scores/`` folder.

    python bench/bench_screen_verify.py [--shards 200] [--rows 1024] [--repeats 5]
writes bench/results/screen_verify.{json,md}. The shards are synthetic but have the job's exact schema (15 columns,
sealed by `noisefast.screen.integrity.seal`); the timings are best-of-N wall seconds, the two readers alternating.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from noisefast.bench.machine import load_average, machine_info, now_iso, versions


def write_shards(folder: Path, n: int, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from noisefast.screen.integrity import seal

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    const = lambda v, t=None: pa.array([v] * rows, t)  # noqa: E731
    for i in range(n):
        sid = f"full-p{i:06d}-s000000000-{i:016x}"
        t = pa.table({
            "prompt_id": const(f"p{i % 50}"), "prompt": const(f"a prompt number {i % 50} with some words"),
            "negative_prompt": const(None, pa.string()), "seed": pa.array(np.arange(rows), pa.int64()),
            "stability": pa.array(rng.random(rows), pa.float64()), "stage": const("full"),
            "steps": const(10, pa.int32()), "inversion_steps": const(10, pa.int32()), "guidance_scale": const(2.0),
            "inversion_guidance_scale": const(1.0), "height": const(8, pa.int32()), "width": const(8, pa.int32()),
            "model": const("builtin:digits"), "dtype": const("float32"), "shard": const(sid),
        })  # fmt: skip
        pq.write_table(seal(t, sid, "full"), folder / f"{sid}.parquet")


def main() -> None:
    import pyarrow.dataset as ds

    from noisefast.screen.integrity import read_stage

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "screen_verify"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shards(root / "scores", a.shards, a.rows)
        readers = {"pyarrow.dataset (plain)": lambda: ds.dataset(root / "scores", format="parquet").to_table(),
                   "read_stage (verified)": lambda: read_stage(root, "scores").table}  # fmt: skip
        best = {k: float("inf") for k in readers}
        for _ in range(a.repeats):
            for name, read in readers.items():
                t0 = time.perf_counter()
                table = read()
                best[name] = min(best[name], time.perf_counter() - t0)
                assert table.num_rows == a.shards * a.rows
    rows = a.shards * a.rows
    extra_us = (best["read_stage (verified)"] - best["pyarrow.dataset (plain)"]) / rows * 1e6
    res = {"command": " ".join(["python", "bench/bench_screen_verify.py", *sys.argv[1:]]),
           "date": now_iso(), "machine": machine_info() | {"versions": versions()}, "load_average": load_average(),
           "shards": a.shards, "rows_per_shard": a.rows, "best_of": a.repeats, "best_s": best,
           "verification_us_per_row": round(extra_us, 3)}  # fmt: skip
    Path(a.out + ".json").write_text(json.dumps(res, indent=1) + "\n")
    m, load = res["machine"], res["load_average"]
    md = [f"Verified reads of a screening folder: {a.shards} shards × {a.rows} rows ({rows} rows), best of {a.repeats}; "
          f"{res['date']}; {m.get('cpu')} ({m.get('cores')} cores), load average "
          f"{f'{load[0]:.1f}' if load else 'unknown'}.", "",
          "| reader | seconds | µs/row |", "|---|---:|---:|"]
    md += [f"| {k} | {v:.3f} | {v / rows * 1e6:.2f} |" for k, v in best.items()]
    md += ["", f"Verification adds {extra_us:.2f} µs per row read (command: `{res['command']}`)."]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
