"""``noisefast bench serve``: a closed-loop load generator against a `noisefast serve` (after ``vllm bench serve``).

For each concurrency level, N clients send ``POST /v1/select`` (or ``/v1/score``) with K seeds back to back. Warm-up
lasts until every client has had one answer (the first wave of a closed loop arrives at once and waits less than
the steady-state queue) or ``max_warmup`` seconds; then a ``duration``-second window, ended early after
``max_requests`` answers. Latency and throughput count the requests that finish in the window (as wrk and similar
tools do): requests/s, rows/s (= requests × K), latency p50/p90/p95/p99, and errors — every answer that is not 2xx,
whatever its body, by status code, plus connection failures by exception name. Requests in flight when the window
ends are cancelled (the client disconnects, so the server drops their queued rows) and reported as
``cut_at_deadline``, not as errors: a level is bounded in time and in count by construction.

Against ``--url`` (any server; the engine configuration it reports on ``GET /v1/info`` is recorded), or — without
one — against a ``noisefast serve`` this command starts on 127.0.0.1 with the command's engine options and stops
with SIGTERM at the end.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

from noisefast.errors import InputError

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# EngineConfig field → how `noisefast serve` spells it (a field missing here is an error, not a dropped option)
_FLAGS = {"model": "--model", "device": "--device", "dtype": "--dtype", "backend": "--backend", "variant": "--variant",
          "family": "--family", "batch_size": "--batch-size", "threads": "--threads"}  # fmt: skip


def _httpx():
    try:
        import httpx
    except ImportError:
        raise InputError("noisefast bench serve needs httpx: pip install 'noisefast[bench]'") from None
    return httpx


def engine_argv(config) -> list[str]:
    """``noisefast serve`` flags that rebuild ``config`` (`noisefast.config.EngineConfig.from_cli_args`'s inverse)."""
    argv = []
    for name, value in config.as_dict().items():
        if value is None or value is False:
            continue
        if name == "strict":
            argv.append("--strict")
        elif name == "fast_path":
            fp = config.fast_path
            if fp == type(fp).turbo():
                argv.append("--fast")
                continue
            if fp.dtype is not None:  # the command line sets the fast path's dtype only through --fast
                raise InputError(f"fast path {fp.as_dict()}: `noisefast serve` takes its dtype only with --fast")
            argv += (["--channels-last"] * fp.channels_last + ["--fuse-qkv"] * fp.fuse_qkv
                     + ["--cuda-graph"] * fp.cuda_graph + ["--pinned"] * fp.pinned
                     + (["--attention", fp.attention] if fp.attention != "default" else []))  # fmt: skip
        elif name in _FLAGS:
            argv += [_FLAGS[name], str(value)]
        else:
            raise ValueError(f"engine option {name!r} has no `noisefast serve` flag here")
    return argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config, server_args: list[str], *, timeout_s: float) -> tuple[subprocess.Popen, str]:
    """A ``noisefast serve`` subprocess on 127.0.0.1 (a free port), ready (``/readyz`` 200) within ``timeout_s``."""
    httpx = _httpx()
    port = free_port()
    cmd = [sys.executable, "-m", "noisefast.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", *engine_argv(config), *server_args]  # fmt: skip
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on a full pipe
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read()[-2000:]
            log.close()
            raise RuntimeError(f"the server exited ({proc.returncode}): {tail}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"the server was not ready within {timeout_s:g} s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the server finishes what is in flight), then kill after 60 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log.close()


def server_info(url: str, headers: dict) -> dict | None:
    httpx = _httpx()
    try:
        r = httpx.get(f"{url}/v1/info", headers=headers, timeout=10)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def batch_counts(url: str) -> tuple[float, float] | None:
    """(rows, batches) the server has run so far (``noisefast_batch_rows`` histogram of ``/metrics``)."""
    httpx = _httpx()
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("noisefast_batch_rows_sum", "noisefast_batch_rows_count"):
            found[name] = float(value)
    return (found["noisefast_batch_rows_sum"], found["noisefast_batch_rows_count"]) if len(found) == 2 else None


async def load(url: str, endpoint: str, concurrency: int, *, k: int, settings: dict, prompt: str | None,
               duration: float, max_warmup: float, max_requests: int, headers: dict, seed: int = 0) -> dict:
    """One closed-loop level (see the module docstring); latencies in seconds."""
    httpx = _httpx()
    target = f"{url}/v1/{endpoint}"
    lat, errors, rng = [], {}, random.Random(seed)
    t0 = time.monotonic()
    window = {"start": t0 + max_warmup, "end": t0 + max_warmup + duration}
    answered: set[int] = set()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=max(600.0, duration + max_warmup), headers=headers) as client:

        async def worker(i: int):
            while time.monotonic() < window["end"] and len(lat) + sum(errors.values()) < max_requests:
                start = rng.randrange(0, 1_000_000)
                text = prompt or f"a handwritten digit {rng.choice(NAMES)}"
                payload = {"prompt": text, "seeds": {"start": start, "count": k}, "settings": settings}
                t = time.monotonic()
                try:
                    r = await client.post(target, json=payload)
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
                if isinstance(code, int) and 200 <= code < 300:
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
    measured = max(min(time.monotonic(), window["end"]) - window["start"], 1e-9)
    return {"concurrency": concurrency, "latencies_s": lat, "requests": len(lat), "errors": errors,
            "cut_at_deadline": len(pending), "warmup_s": round(window["start"] - t0, 2),
            "steady": len(answered) == concurrency, "window_s": round(measured, 3)}  # fmt: skip


def measure(run, url: str, *, endpoint: str, levels, k: int, settings: dict, prompt: str | None, duration: float,
            max_warmup: float, max_requests: int, headers: dict) -> None:
    """Every level into ``run``: latency samples per level (group ``serve c<N>``) and the level's rates."""
    from noisefast.bench.stats import percentile

    levels_out = run.results.setdefault("levels", [])
    for c in levels:
        with run.part(f"concurrency {c}"):
            before = batch_counts(url)
            r = asyncio.run(load(url, endpoint, c, k=k, settings=settings, prompt=prompt, duration=duration,
                                 max_warmup=max_warmup, max_requests=max_requests, headers=headers))  # fmt: skip
            after = batch_counts(url)
            lat = r.pop("latencies_s")
            group = f"serve c{c}"
            if lat:
                run.add(group, "latency", lat, per=1, per_unit="request")
            r |= {"req_per_s": len(lat) / r["window_s"], "rows_per_s": len(lat) * k / r["window_s"],
                  **{f"p{q}_s": percentile(lat, q) if lat else None for q in (50, 90, 95, 99)}}  # fmt: skip
            r["p99_over_p50"] = r["p99_s"] / r["p50_s"] if lat else None
            run.add(group, "throughput", [r["req_per_s"]], unit="req/s", better="higher")
            if before and after and after[1] > before[1]:
                r["server_batches"] = after[1] - before[1]
                r["server_mean_rows_per_batch"] = (after[0] - before[0]) / (after[1] - before[1])
            levels_out.append(r)
            print(f"  {c} clients: {r['req_per_s']:.2f} req/s, {r['rows_per_s']:.1f} rows/s, p50 "
                  f"{r['p50_s'] or float('nan'):.3f} s, errors {sum(r['errors'].values())}", flush=True)  # fmt: skip
