"""A request that times out or whose client leaves stops within ONE UNet call: a deliberately slow denoiser
(every call sleeps) shows when the model's thread is free again, for a scored batch, a batch shared with a live
request (the cancelled rows leave it) and an optimize task."""

import asyncio
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from _serve_helpers import FAST, P3, P7, engine, run, served  # noqa: E402, F401

CALL_S = 0.25  # each UNet call of the slow denoiser


class SlowDenoiser:
    """The Engine's denoiser, each call held ``CALL_S`` seconds; records (start, end, rows) of every call."""

    def __init__(self, den):
        self.den, self.calls, self.lock = den, [], threading.Lock()

    def __getattr__(self, name):
        return getattr(self.den, name)

    @property
    def autograd(self):  # the backend's gradient path (auto, ONNX Runtime: the torch UNet) held up the same way
        inner = getattr(self.den, "autograd", None)
        if inner is None:
            return None
        twin = SlowDenoiser(inner)
        twin.calls, twin.lock = self.calls, self.lock
        return twin

    def __call__(self, x, t, cond):
        start = time.monotonic()
        time.sleep(CALL_S)
        out = self.den(x, t, cond)
        with self.lock:
            self.calls.append((start, time.monotonic(), x.shape[0]))
        return out


@pytest.fixture
def slow(engine, monkeypatch):
    from noisefast.engine_fastpath import warm_up_backend

    warm_up_backend(engine, engine.settings())  # auto's decisions taken first, as the server's warm-up does
    den = SlowDenoiser(engine.den)
    monkeypatch.setattr(engine, "den", den)
    return den


def unslowed(engine, *args, **kw):
    """The Engine's scores with its own denoiser (the reference)."""
    slow, engine.den = engine.den, engine.den.den
    try:
        return engine.score(*args, **kw)
    finally:
        engine.den = slow


def metric(c, name, **labels):
    m = getattr(c.service.metrics, name)
    return (m.labels(*labels.values()) if labels else m)._value.get()


def test_504_frees_the_model_within_one_unet_call(engine, slow):
    """10 + 10 steps with CFG on denoising: 20 calls (~5 s); --timeout 0.6 s answers 504 and the thread stops
    at the next call, so the following request starts right after."""

    async def go():
        async with served(engine, request_timeout_s=0.6, max_wait_ms=0) as c:
            t0 = time.monotonic()
            r = await c.post("/v1/score", json={"prompt": P3, "seeds": [0, 1, 2], "settings": {"steps": 10}})
            answered = time.monotonic()
            c.service.config.request_timeout_s = 30
            ok = await c.post("/v1/score", json={"prompt": P7, "seeds": [5], "settings": FAST})
            return r, ok, t0, answered, metric(c, "aborted", kind="batch"), metric(c, "cancelled", reason="timeout")

    r, ok, t0, answered, aborted, cancelled = run(go())
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout" and "--timeout" in r.json()["error"]["msg"]
    assert ok.status_code == 200, ok.text
    first = [c for c in slow.calls if c[0] < answered]  # the timed-out request's calls
    assert len(first) <= 4, first  # ~0.6 s of 0.25 s calls, never the 20 the request needed
    assert max(end for _, end, _ in first) <= answered + CALL_S + 0.2  # the call under way at the 504 was the last
    assert aborted == 1 and cancelled == 1
    torch.testing.assert_close(torch.tensor(ok.json()["scores"]), unslowed(engine, P7, [5], **FAST), atol=1e-5, rtol=0)


def test_cancelled_rows_leave_a_shared_batch(engine, slow):
    """Two requests share one batch; the one that times out leaves it at the next UNet call (the calls shrink
    from 4 + 4 rows to the live request's 4), and the live one's scores are unchanged."""

    async def go():
        async with served(engine, batch_size=16, max_wait_ms=300) as c:
            s = engine.settings(steps=6, inversion_steps=6, guidance_scale=1.0)  # no CFG: a call = the batch's rows
            b = c.service.batcher
            short = asyncio.create_task(b.score(P3, [0, 1, 2, 3], s, timeout=0.6))
            live = asyncio.create_task(b.score(P7, [4, 5, 6, 7], s, timeout=30))
            with pytest.raises(Exception, match="within"):
                await short
            return await live, metric(c, "rows_left"), b.batches_done

    scores, left, batches = run(go())
    rows = [n for _, _, n in slow.calls]
    assert batches == 1 and rows[0] == 8 and rows[-1] == 4 and sorted(rows, reverse=True) == rows, rows
    assert len(rows) == 12 and left == 4
    want = unslowed(engine, P7, [4, 5, 6, 7], steps=6, inversion_steps=6, guidance_scale=1.0)
    torch.testing.assert_close(scores, want, atol=1e-5, rtol=0)


def test_optimize_timeout_frees_the_model_within_one_unet_call(engine, slow):
    async def go():
        async with served(engine, request_timeout_s=0.8, max_wait_ms=0) as c:
            r = await c.post("/v1/optimize", json={"prompt": P3, "seed": 1, "iterations": 50, "settings": FAST})
            answered = time.monotonic()
            await asyncio.sleep(CALL_S + 0.3)
            return r, answered, metric(c, "aborted", kind="task")

    r, answered, aborted = run(go())
    assert r.status_code == 504 and aborted == 1
    assert max(end for _, end, _ in slow.calls) <= answered + CALL_S + 0.2, slow.calls


def test_warm_up_decides_every_rows_bucket_before_the_first_request(engine):
    """backend auto: the server's warm-up takes the decision of every call shape a batch can make (1 … 2 × batch
    rows, CFG stacking both halves), so no request runs a measurement."""
    from noisefast.engine_fastpath import warm_up_backend

    calls = warm_up_backend(engine, engine.settings(batch_size=8))
    assert calls == 5 and {1, 2, 4, 8, 16} <= {d.shape["rows_bucket"] for d in engine.den.decisions.values()}
