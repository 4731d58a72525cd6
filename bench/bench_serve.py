"""Load test of `noisefast serve` on loopback: /v1/select with K seeds from N concurrent clients.

For each batching mode (dynamic: ``--batch-size 32``; per-request: ``--batch-size K``; off: ``--batch-size 1``) a
server subprocess starts on 127.0.0.1 (builtin:digits), then for each concurrency level the clients send
requests back to back for a warm-up (until every client has had one answer, at most ``--max-warmup`` s) and a ``--duration``-second
window: throughput (requests/s, rows/s) and latency p50/p95/p99 of the requests answered in the window, errors
by status. Every run is bounded ((max warm-up + duration) × levels × modes + start-up): requests in flight at
the end are cancelled, and it stops by itself.

    python bench/bench_serve.py --duration 60                 # → bench/results/serve-DATE.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, max_batch: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "import sys; from noisefast.cli import main; sys.exit(main(sys.argv[1:]))", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--batch-size", str(max_batch), "--max-wait-ms", str(args.max_wait_ms), "--threads", str(args.threads),
           "--max-queue", "100000", "--timeout", "300", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready within 300 s")


async def load(port: int, concurrency: int, duration: float, max_warmup: float, k: int, settings: dict) -> dict:
    """Closed loop: `concurrency` clients send back to back; warm-up, then a `duration`-second window.

    Warm-up lasts until every client has had one answer (the first wave of a closed loop arrives at once and
    waits less than the steady-state queue) or `max_warmup` seconds. Latency and throughput count the requests
    that finish in the window (as wrk and similar tools do). Requests in flight at the end are cancelled (the
    client disconnects, so the server drops their queued rows) and reported as ``cut_at_deadline``, not as
    errors: the run is bounded in time by construction.
    """
    url = f"http://127.0.0.1:{port}/v1/select"
    lat, errors, rng = [], {}, random.Random(0)
    t0 = time.monotonic()
    window = {"start": t0 + max_warmup, "end": t0 + max_warmup + duration}
    answered = set()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:

        async def worker(i: int):
            while time.monotonic() < window["end"]:
                start = rng.randrange(0, 1_000_000)
                payload = {"prompt": f"a handwritten digit {rng.choice(NAMES)}", "seeds": {"start": start, "count": k},
                           "settings": settings}  # fmt: skip
                t = time.monotonic()
                try:
                    r = await client.post(url, json=payload)
                    code = r.status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                if len(answered) < concurrency:
                    answered.add(i)
                    if len(answered) == concurrency:  # every client has waited through the queue once: steady
                        now = time.monotonic()
                        window.update(start=now, end=now + duration)
                done = time.monotonic()
                if not window["start"] <= done <= window["end"]:
                    continue
                if code == 200:
                    lat.append(done - t)
                else:
                    errors[str(code)] = errors.get(str(code), 0) + 1

        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        pending = set(tasks)
        while pending and time.monotonic() < window["end"]:
            _, pending = await asyncio.wait(pending, timeout=max(0.0, min(1.0, window["end"] - time.monotonic())))
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    a = np.array(lat) if lat else np.array([np.nan])
    steady = len(answered) == concurrency
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors, "cut_at_deadline": len(pending),
            "warmup_s": round(window["start"] - t0, 1), "steady": steady, "window_s": round(duration, 2),
            "req_per_s": round(len(lat) / duration, 3), "rows_per_s": round(len(lat) * k / duration, 1),
            "p50_ms": round(float(np.percentile(a, 50)) * 1e3, 1), "p95_ms": round(float(np.percentile(a, 95)) * 1e3, 1),
            "p99_ms": round(float(np.percentile(a, 99)) * 1e3, 1),
            "p99_over_p50": round(float(np.percentile(a, 99) / np.percentile(a, 50)), 2) if lat else None}  # fmt: skip


def batch_stats(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    fam = {f.name: f for f in text_string_to_metric_families(text)}["noisefast_batch_rows"]
    s = {x.name: x.value for x in fam.samples if not x.labels.get("le")}
    n = s.get("noisefast_batch_rows_count", 0)
    return {"batches": int(n), "mean_rows_per_batch": round(s.get("noisefast_batch_rows_sum", 0) / n, 2) if n else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds per (mode, concurrency) (default: 60)")
    ap.add_argument("--max-warmup", type=float, default=120.0,
                    help="warm-up ends when every client has had one answer, or after this many seconds (default: 120)")
    ap.add_argument("--modes", default="dynamic,off",
                    help="comma-separated: dynamic (--batch-size N), per-request (--batch-size K: each request's rows "
                         "alone, no packing across requests), off (--batch-size 1)")
    ap.add_argument("--tag", default="", help="suffix of the result files (serve-DATE[-TAG].json/md)")
    ap.add_argument("--batch-size", type=int, default=32, help="the dynamic mode's max rows per UNet batch (default: 32)")
    ap.add_argument("--levels", default="1,8,64")
    ap.add_argument("--k", type=int, default=32, help="seeds per select request")
    ap.add_argument("--steps", type=int, default=2, help="denoising = inversion steps (default: 2, a few-step serving schedule)")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    modes = {"dynamic": args.batch_size, "per-request": args.k, "off": 1}
    modes = [(m, modes[m]) for m in args.modes.split(",")]
    settings = {"steps": args.steps, "inversion_steps": args.steps}
    res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()} {platform.release()}",
           "load_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
           "command": " ".join(["python", "bench/bench_serve.py", *sys.argv[1:]]), "model": "builtin:digits",
           "k": args.k, "settings": settings, "runs": []}  # fmt: skip
    for mode, max_batch in modes:
        port = free_port()
        proc = start_server(port, max_batch, args)
        try:
            for c in levels:
                r = asyncio.run(load(port, c, args.duration, args.max_warmup, args.k, settings))
                res["runs"].append({"batching": mode, "max_batch": max_batch} | r)
                print(json.dumps(res["runs"][-1]), flush=True)
            res["runs"][-1]["server"] = batch_stats(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    res["load_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"serve-{res['date'][:10]}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2))
    md = [f"# noisefast serve: /v1/select, K={args.k} seeds, builtin:digits, {args.steps} steps", "",
          f"{res['date']}; {res['machine']}; `{res['command']}`", "",
          f"closed loop; warm-up until every client has had one answer (≤ {args.max_warmup:g} s), then {args.duration:g} s "
          f"measured per row; server `--threads {args.threads}`, "
          f"`--max-wait-ms {args.max_wait_ms:g}`", "", f"load before: `{res['load_before']}`",
          f"load after: `{res['load_after']}`", "",
          "| batching | clients | warm-up s | steady | requests | req/s | rows/s | p50 ms | p95 ms | p99 ms | p99/p50 | errors | cut at end |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["runs"]:
        md.append(f"| {r['batching']} (max {r['max_batch']}) | {r['concurrency']} | {r['warmup_s']} | {'yes' if r['steady'] else 'no'} | "
                  f"{r['requests']} | {r['req_per_s']} | "
                  f"{r['rows_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['p99_over_p50']} | "
                  f"{sum(r['errors'].values())} | {r['cut_at_deadline']} |")
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
