"""`noisefast serve` in process: every endpoint against the Engine, batching across requests, limits, faults.

builtin:digits at 2 steps; requests go through httpx's ASGI transport (no socket), the model's worker thread
is real. Concurrency tests hold the worker at a gate so what shares a batch (or is dropped) is certain.
"""

import asyncio
import base64
import dataclasses
import io

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from _serve_helpers import FAST, P3, P7, body, engine, hold_worker, run, served  # noqa: E402, F401


# --- every endpoint equals the Engine -------------------------------------------------------------------------
def test_score_select_equal_engine(engine):
    async def go():
        async with served(engine) as c:
            r1 = await c.post("/v1/score", json=body(seeds=[5, 1, 9, 2]))
            r2 = await c.post("/v1/select", json=body(P7, {"start": 0, "count": 12}))
            return r1, r2

    r1, r2 = run(go())
    assert r1.status_code == 200 and r2.status_code == 200, (r1.text, r2.text)
    want = engine.score(P3, [5, 1, 9, 2], **FAST)
    assert r1.json()["seeds"] == [5, 1, 9, 2]
    torch.testing.assert_close(torch.tensor(r1.json()["scores"]), want, atol=1e-5, rtol=0)
    sel, got = engine.select(P7, range(12), **FAST), r2.json()
    assert got["seeds"] == list(sel.seeds) and got["source"] == "computed"
    assert got["best_seed"] == sel.best_seed and got["worst_seed"] == sel.worst_seed
    torch.testing.assert_close(torch.tensor(got["scores"]), sel.scores, atol=1e-5, rtol=0)


def test_optimize_and_generate_equal_engine(engine):
    from safetensors.torch import load

    async def go():
        async with served(engine) as c:
            o = await c.post("/v1/optimize", json={"prompt": P3, "seed": 4, "iterations": 3, "settings": FAST})
            noise = o.json()["noise"]
            g1 = await c.post("/v1/generate", json={"prompt": P3, "seed": 4, "settings": FAST})
            g2 = await c.post("/v1/generate", json={"prompt": P3, "seed": 4, "settings": FAST},
                              headers={"Accept": "image/png"})  # fmt: skip
            g3 = await c.post("/v1/generate", json={"prompt": P3, "noise": noise, "settings": FAST})
            return o, g1, g2, g3

    o, g1, g2, g3 = run(go())
    assert o.status_code == 200, o.text
    opt = engine.optimize(P3, [4], iterations=3, **FAST)
    out = o.json()
    # the CLI report's fields (noisefast.workflows.OptimizeReport): history [steps + 1][1], rescored before/after
    torch.testing.assert_close(torch.tensor(out["history"])[:, 0], opt.history[:, 0], atol=1e-5, rtol=0)
    assert out["steps_run"] == opt.steps_run and out["seeds"] == [4] and out["complete"]
    assert out["stability_before"][0] == pytest.approx(float(opt.history[0, 0]), abs=1e-5)
    assert out["stability_after"][0] == pytest.approx(float(opt.history[:, 0].max()), abs=1e-5)
    tensors = load(base64.b64decode(out["noise"]))
    torch.testing.assert_close(tensors["best"], opt.best_noise.cpu(), atol=1e-5, rtol=0)

    def png(img):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    assert g1.status_code == 200 and g1.json()["format"] == "png"
    assert base64.b64decode(g1.json()["image"]) == png(engine.generate(P3, [4], **FAST).images[0])
    assert g2.headers["content-type"] == "image/png" and g2.content == base64.b64decode(g1.json()["image"])
    assert g3.status_code == 200, g3.text
    assert base64.b64decode(g3.json()["image"]) == png(engine.generate(P3, noise=tensors["best"], **FAST).images[0])


def test_health_ready_openapi_metrics(engine):
    from prometheus_client.parser import text_string_to_metric_families

    async def go():
        async with served(engine) as c:
            out = [await c.get(p) for p in ("/healthz", "/readyz", "/openapi.json")]
            await c.post("/v1/score", json=body())
            await c.post("/v1/score", json=body(seeds=[]))
            out.append(await c.get("/metrics"))
            return out

    h, r, spec, m = run(go())
    assert h.json() == {"status": "ok"} and r.json()["ready"] is True
    assert {"/v1/score", "/v1/select", "/v1/optimize", "/v1/generate"} <= set(spec.json()["paths"])
    fams = {f.name: f for f in text_string_to_metric_families(m.text)}
    for name in ("noisefast_requests", "noisefast_request_seconds", "noisefast_queue_depth", "noisefast_batch_rows",
                 "noisefast_rows_per_second", "noisefast_rows"):  # fmt: skip
        assert name in fams, sorted(fams)
    counts = {(s.labels["endpoint"], s.labels["status"]): s.value for s in fams["noisefast_requests"].samples
              if s.name == "noisefast_requests_total"}  # fmt: skip
    assert counts[("/v1/score", "200")] == 1 and counts[("/v1/score", "422")] == 1
    assert fams["noisefast_rows_per_second"].samples[0].value > 0


# --- dynamic batching ------------------------------------------------------------------------------------------
def test_requests_of_different_prompts_share_batches(engine):
    prompts = [P3, P7, "a handwritten digit zero", "a handwritten digit one"]

    async def go():
        async with served(engine, batch_size=16, max_wait_ms=200) as c:
            rs = await asyncio.gather(*(c.post("/v1/score", json=body(p, [i, i + 10, i + 20])) for i, p in enumerate(prompts)))
            return rs, c.service.batcher.batches_done

    rs, batches = run(go())
    assert batches == 1  # 4 requests × 3 rows: one UNet batch
    for i, (p, r) in enumerate(zip(prompts, rs)):
        want = engine.score(p, [i, i + 10, i + 20], **FAST)
        torch.testing.assert_close(torch.tensor(r.json()["scores"]), want, atol=1e-5, rtol=0)


def test_groups_take_turns(engine):
    async def go():
        async with served(engine, batch_size=4, max_wait_ms=0) as c:
            gate, big = await hold_worker(c, range(32))
            other = asyncio.create_task(c.post("/v1/score", json=body(seeds=[1, 2], settings={"steps": 3, "inversion_steps": 2})))
            await asyncio.sleep(0.05)
            gate.open_.set()
            r_other = await other
            big_done_first = big.done()
            return await big, r_other, big_done_first

    r_big, r_other, big_done_first = run(go())
    assert r_big.status_code == 200 and r_other.status_code == 200
    assert not big_done_first  # the other group went after one batch of the big request, not after all 8


# --- faults -----------------------------------------------------------------------------------------------------
def test_timeout_504_and_disconnect_drop_queued_rows(engine):
    async def go():
        async with served(engine, batch_size=4, max_wait_ms=0, request_timeout_s=0.3) as c:
            gate, first = await hold_worker(c, [0, 1, 2, 3])
            second = await c.post("/v1/score", json=body(seeds=[4, 5, 6, 7]))  # queued behind the gate: 504
            # a client that leaves: raw ASGI, the disconnect arrives right after the body
            sent = []
            payload = httpx.Request("POST", "http://t/v1/score", json=body(seeds=[8, 9])).content
            msgs = [{"type": "http.request", "body": payload, "more_body": False}]

            async def receive():
                return msgs.pop(0) if msgs else {"type": "http.disconnect"}

            async def send(m):
                sent.append(m)

            scope = {"type": "http", "method": "POST", "path": "/v1/score", "headers": [(b"content-type", b"application/json")],
                     "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1),
                     "root_path": "", "asgi": {"version": "3.0"}}  # fmt: skip
            app = c._transport.app
            await app(scope, receive, send)
            gate.open_.set()
            r_first = await first
            await asyncio.sleep(0.05)
            fams = c.service.metrics.rows_dropped._value.get()
            return r_first, second, sent, gate, fams

    r_first, second, sent, gate, dropped = run(go())
    assert r_first.status_code == 504  # it was in the UNet when its time ran out: answered 504, rows done anyway
    assert second.status_code == 504 and "within" in second.json()["error"]["msg"]
    assert sent[0]["status"] == 499
    assert gate.rows == 4 and gate.calls == 1  # only the first request's rows ever reached the UNet
    assert dropped == 6


def test_queue_full_429_with_retry_after(engine):
    async def go():
        async with served(engine, batch_size=4, max_wait_ms=0, max_queue_rows=8) as c:
            gate, first = await hold_worker(c, [0, 1, 2, 3])
            second = asyncio.create_task(c.post("/v1/score", json=body(seeds=list(range(4, 12)))))
            while c.service.batcher.queue_rows() < 8:
                await asyncio.sleep(0.005)
            third = await c.post("/v1/score", json=body(seeds=[99]))
            gate.open_.set()
            return await first, await second, third

    first, second, third = run(go())
    assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
    assert first.status_code == 200 and second.status_code == 200


def test_poisoned_request_fails_alone(engine, monkeypatch):
    real = engine.condition

    def condition(prompt, negative_prompt=None, settings=None):
        cond = real(prompt.replace("POISON ", ""), negative_prompt, settings)
        if prompt.startswith("POISON"):  # a condition whose embeddings cannot be packed with the others
            cond = dataclasses.replace(cond, prompt_embeds=cond.prompt_embeds[:, :, :1].contiguous())
        return cond

    monkeypatch.setattr(engine, "condition", condition)
    from safetensors.torch import save

    nan_noise = base64.b64encode(save({"noise": torch.full((1, 1, 8, 8), float("nan"))})).decode()

    async def go():
        async with served(engine, batch_size=16, max_wait_ms=200) as c:
            rs = await asyncio.gather(
                c.post("/v1/score", json=body(seeds=[0, 1])), c.post("/v1/score", json=body("POISON " + P3, [2, 3])),
                c.post("/v1/score", json=body(P7, [4, 5])),
                c.post("/v1/generate", json={"prompt": P3, "noise": nan_noise, "settings": FAST}),
            )  # fmt: skip
            return rs, c.service.batcher.batches_done

    (good, bad, good2, gen), batches = run(go())
    assert batches == 1 and bad.status_code == 500 and gen.status_code == 422, (bad.text, gen.text)
    assert "finite" in gen.json()["error"]["msg"] and gen.json()["error"]["loc"] == ["body", "noise"]
    monkeypatch.setattr(engine, "condition", real)
    torch.testing.assert_close(torch.tensor(good.json()["scores"]), engine.score(P3, [0, 1], **FAST), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(good2.json()["scores"]), engine.score(P7, [4, 5], **FAST), atol=1e-5, rtol=0)
