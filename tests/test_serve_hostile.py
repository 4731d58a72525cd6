"""Hostile HTTP requests, as a gateway sees them first: non-finite numbers, lone surrogates, wrong types, wrong
content types, broken encodings, oversize and chunked bodies, the key checked before the body, over-cost
requests, slow bodies, timeouts and disconnects. Every answer is a 4xx whose error body (`ErrorOut`) names the
field or the limit — or a documented 504 — never a 5xx, never an echo of the input; and the server answers a
normal request correctly afterwards."""

import asyncio
import json

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from _serve_helpers import FAST, P3, engine, run, served  # noqa: E402, F401

JSON = {"content-type": "application/json"}
NONFINITE = ("NaN", "Infinity", "-Infinity", "1e400")


def score(**fields) -> str:
    return json.dumps({"prompt": P3, "seeds": [1], "settings": FAST} | fields)


def raw(path, text, headers=JSON):
    return ("raw", path, text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text, headers)


def splice(template: dict, marker: str, value: str) -> str:
    """``template`` as JSON with the string ``marker`` replaced by the raw JSON token ``value`` (NaN, 1e400, …)."""
    return json.dumps(template).replace(json.dumps(marker), value)


S, O, G = "/v1/score", "/v1/optimize", "/v1/generate"
OPT = {"prompt": P3, "seed": 1, "iterations": 2, "settings": FAST}
GEN = {"prompt": P3, "seed": 1, "settings": FAST}

# (request, status, words the message must hold, the loc it must end with or None)
CASES = [
    # --- non-finite numbers in every numeric field: 422 naming it -----------------------------------------------
    *[(raw(S, splice({"prompt": P3, "seeds": ["X"]}, "X", v)), 422, "seeds[0]", ("seeds", 0)) for v in NONFINITE],
    *[(raw(S, splice({"prompt": P3, "settings": {"guidance_scale": "X"}}, "X", v)), 422, "finite",
       ("settings", "guidance_scale")) for v in NONFINITE],  # fmt: skip
    *[(raw(S, splice({"prompt": P3, "seeds": [1], "settings": {k: "X"}}, "X", v)), 422, f"settings.{k}", ("settings", k))
      for k, v in (("steps", "NaN"), ("inversion_steps", "Infinity"), ("height", "1e400"), ("width", "-Infinity"),
                   ("inversion_guidance_scale", "NaN"))],  # fmt: skip
    (raw(S, splice({"prompt": P3, "seeds": {"count": "X"}}, "X", "NaN")), 422, "seeds.count", ("seeds", "count")),
    (raw(S, splice({"prompt": P3, "seeds": {"start": "X", "count": 1}}, "X", "1e400")), 422, "seeds.start",
     ("seeds", "start")),  # fmt: skip
    *[(raw(O, splice(OPT | {k: "X"}, "X", v)), 422, k, (k,))
      for k, v in (("seed", "NaN"), ("iterations", "Infinity"), ("lr", "NaN"), ("momentum", "-Infinity"),
                   ("target", "1e400"))],  # fmt: skip
    (raw(G, splice(GEN | {"seed": "X"}, "X", "1e400")), 422, "seed", ("seed",)),
    # --- text that is not valid Unicode -------------------------------------------------------------------------
    (raw(S, '{"prompt": "\\ud800", "seeds": [1]}'), 422, "prompt: must be valid Unicode", ("prompt",)),
    (raw(S, '{"prompt": "a\\udfffb", "seeds": [1]}'), 422, "surrogate", ("prompt",)),
    (raw(S, '{"prompt": "a", "negative_prompt": "\\ud83d", "seeds": [1]}'), 422, "negative_prompt", ("negative_prompt",)),
    (raw(O, '{"prompt": "\\udc00", "seed": 1}'), 422, "prompt", ("prompt",)),
    (raw(G, '{"prompt": "\\ud800\\ud800", "seed": 1}'), 422, "prompt", ("prompt",)),
    (raw(G, '{"prompt": "a", "noise": "\\ud800"}'), 422, "noise", ("noise",)),
    # --- wrong types: never coerced ----------------------------------------------------------------------------
    *[(raw(S, score(seeds=[v])), 422, "seeds[0]", ("seeds", 0)) for v in (True, "3", 1.5, None, [1], {"a": 1})],
    (raw(S, score(seeds="0-10")), 422, "seeds must be a list", ("seeds",)),
    (raw(S, score(seeds={"count": True})), 422, "seeds.count", ("seeds", "count")),
    *[(raw(S, score(settings={"steps": v})), 422, "settings.steps", ("settings", "steps")) for v in (True, "2", 2.5)],
    *[(raw(S, score(settings={"guidance_scale": v})), 422, "settings.guidance_scale", ("settings", "guidance_scale"))
      for v in ("2", False, [2])],  # fmt: skip
    *[(raw(O, json.dumps(OPT | {"renorm": v})), 422, "renorm", ("renorm",)) for v in ("yes", 1, "true")],
    (raw(O, json.dumps(OPT | {"iterations": 2.5})), 422, "iterations", ("iterations",)),
    (raw(O, json.dumps(OPT | {"lr": "0.1"})), 422, "lr", ("lr",)),
    *[(raw(S, json.dumps({"prompt": v, "seeds": [1]})), 422, "prompt", ("prompt",)) for v in (3, ["a"], None, True)],
    (raw(S, score(negative_prompt={})), 422, "negative_prompt", ("negative_prompt",)),
    (raw(S, score(settings=[])), 422, "settings", ("settings",)),
    (raw(S, score(settings=None)), 422, "settings", ("settings",)),
    *[(raw(S, v), 422, "the body", ()) for v in ("[]", '"score"', "3", "null")],
    *[(raw(G, json.dumps(GEN | {"seed": v})), 422, "seed", ("seed",)) for v in ("1", None, True)],
    # --- values outside the published bounds (the server's limits and the library's ranges) ---------------------
    (raw(S, score(seeds=[-1])), 422, "seeds[0]", ("seeds", 0)),
    (raw(S, score(seeds=[2**63])), 422, "seeds[0]", ("seeds", 0)),
    (raw(S, score(seeds=[1, 1])), 422, "listed twice", ("seeds",)),
    (raw(S, score(seeds=list(range(1025)))), 422, "seeds", ("seeds",)),
    (raw(S, score(seeds={"count": 0})), 422, "seeds.count", ("seeds", "count")),
    (raw(S, score(settings={"steps": 0})), 422, "settings.steps", ("settings", "steps")),
    (raw(S, score(settings={"steps": 101})), 422, "less than or equal to 100", ("settings", "steps")),
    (raw(S, score(settings={"height": 2048})), 422, "settings.height", ("settings", "height")),
    (raw(S, score(settings={"width": 9})), 422, "multiple of 2", ("settings", "width")),  # the model's rule
    (raw(S, score(settings={"width": 512})), 422, "settings.width", ("settings", "width")),  # the model's largest side
    (raw(S, score(settings={"guidance_scale": 1001})), 422, "settings.guidance_scale", ("settings", "guidance_scale")),
    (raw(S, score(settings={"batch_size": 4})), 422, "settings.batch_size: unknown field", ("settings", "batch_size")),
    (raw(S, score(seed=[1])), 422, "seed: unknown field", ("seed",)),
    (raw(O, json.dumps(OPT | {"iterations": 501})), 422, "iterations", ("iterations",)),
    (raw(O, json.dumps(OPT | {"momentum": 1.0})), 422, "momentum", ("momentum",)),
    (raw(O, json.dumps(OPT | {"lr": 0})), 422, "lr", ("lr",)),
    (raw(O, json.dumps(OPT | {"target": 2})), 422, "target", ("target",)),
    (raw(G, json.dumps({"prompt": P3})), 422, "exactly one of seed or noise", ()),
    (raw(G, json.dumps({"prompt": P3, "noise": "AAAA", "settings": {"height": 4}})), 422, "settings.height",
     ("settings", "height")),  # fmt: skip
    (raw(G, json.dumps({"prompt": P3, "noise": "not base64!"})), 422, "noise", ("noise",)),
    # --- what a request costs: refused before it is queued ------------------------------------------------------
    (raw(S, score(seeds={"count": 1000}, settings={"steps": 100, "inversion_steps": 100})), 422, "--max-cost", ()),
    (raw(O, json.dumps(OPT | {"iterations": 500, "settings": {"steps": 50}})), 422, "--max-cost", ()),
    (raw(G, json.dumps(GEN | {"settings": {"height": 256, "width": 256, "steps": 100}})), 422, "--max-cost", ()),
    # --- content types: 415 naming the header -------------------------------------------------------------------
    *[(raw(S, score(), {"content-type": ct}), 415, "content-type", ("content-type",))
      for ct in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/json; charset=latin-1", "application/xml")],  # fmt: skip
    (raw(S, score(), {}), 415, "content-type must be application/json", ("content-type",)),
    # --- bodies that are not UTF-8 JSON: 400 naming where ---------------------------------------------------------
    (raw(S, b'{"prompt": "\xff\xfe"}'), 400, "not valid UTF-8: byte 0xff at offset 12", ()),
    (raw(S, '{"prompt": "x", "seeds": [1'), 400, "not valid JSON", ()),
    (raw(S, ""), 400, "the body is empty", ()),
    (raw(S, "[" * 100_000 + "]" * 100_000), 400, "too deeply", ()),
    (raw(S, score() + "x"), 400, "line 1 column", ()),
    (raw(S, score().encode("utf-16")), 400, "UTF-8", ()),
    # --- oversize: 413 whatever the framing; a long prompt is a short 422 -----------------------------------------
    (raw(S, score(prompt="x" * 1_100_000)), 413, "--max-body-bytes", ()),
    (("stream", S, [b'{"prompt": "', b"x" * 600_000, b"x" * 600_000, b'"}'], JSON), 413, "1000000 bytes", ()),
    (("asgi", S, b"{}", [(b"content-type", b"application/json"), (b"content-length", b"999999999999")]), 413,
     "999999999999 bytes", ()),  # fmt: skip
    (("asgi", S, b"{}", [(b"content-type", b"application/json"), (b"content-length", b"12abc")]), 413, "body", ()),
    (raw(S, score(prompt="y" * 900_000)), 422, "at most 2000 characters", ("prompt",)),
    # --- header blocks: 431 naming the limit -----------------------------------------------------------------------
    (raw(S, score(), JSON | {f"x-h{i}": "1" for i in range(120)}), 431, "--max-headers", ()),
    (raw(S, score(), JSON | {"x-big": "z" * 20_000}), 431, "--max-header-bytes", ()),
    # --- methods and paths -----------------------------------------------------------------------------------------
    (("method", "GET", S), 405, "allowed: POST", ("method",)),
    (("method", "PUT", O), 405, "method PUT", ("method",)),
    (("method", "DELETE", "/v1/info"), 405, "allowed: GET", ("method",)),
    (("method", "GET", "/v1/nothing"), 404, "no such path", ("path",)),
    (raw("/v1/score/", score()), 404, "no such path", ("path",)),
]


async def send(c, req):
    kind, *rest = req
    if kind == "raw":
        path, content, headers = rest
        return await c.post(path, content=content, headers=headers)
    if kind == "method":
        method, path = rest
        return await c.request(method, path)
    if kind == "stream":
        path, chunks, headers = rest

        async def stream():
            for chunk in chunks:
                yield chunk

        return await c.post(path, content=stream(), headers=headers)
    path, body, headers = rest  # raw ASGI: headers exactly as given (httpx would fix Content-Length)
    return await asgi(c, "POST", path, headers, [body])


async def asgi(c, method, path, headers, chunks, then=None, partial=False):
    """One request straight into the app; ``then()`` answers ``receive()`` once the chunks are sent (``partial``: the
    last chunk says more is coming)."""
    msgs = [{"type": "http.request", "body": b, "more_body": partial or i < len(chunks) - 1} for i, b in enumerate(chunks)]
    sent = []

    async def receive():
        if msgs:
            return msgs.pop(0)
        return await then() if then else {"type": "http.disconnect"}

    async def record(m):
        sent.append(m)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "headers": headers,
             "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1),
             "root_path": "", "asgi": {"version": "3.0"}}  # fmt: skip
    await c._transport.app(scope, receive, record)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return httpx.Response(start["status"] if start else 0, content=body, headers=start["headers"] if start else [])


def check(resp, status, words, loc, what):
    assert resp.status_code == status, (what, resp.status_code, resp.text[:400])
    assert len(resp.content) < 2048, (what, len(resp.content))  # never an echo of the input
    err = resp.json()
    assert set(err) == {"error", "errors"} and err["error"] == err["errors"][0], (what, err)
    e = err["error"]
    assert set(e) <= {"type", "loc", "msg", "input"} and isinstance(e["loc"], list) and e["type"], (what, e)
    assert words in e["msg"], (what, e)
    if loc:
        assert tuple(e["loc"][-len(loc):]) == tuple(loc), (what, e)
    assert resp.headers["content-type"] == "application/json", what


def test_hostile_requests_are_named_4xx_then_a_normal_request_works(engine):
    assert len(CASES) >= 60

    async def go():
        async with served(engine) as c:
            out = [await send(c, req) for req, *_ in CASES]
            ok = await c.post("/v1/score", json={"prompt": P3, "seeds": [3, 1], "settings": FAST})
            metrics = (await c.get("/metrics")).text
            return out, ok, metrics

    out, ok, metrics = run(go())
    for (req, status, words, loc), resp in zip(CASES, out):
        check(resp, status, words, loc, req if len(str(req)) < 300 else str(req)[:300])
    assert ok.status_code == 200
    torch.testing.assert_close(torch.tensor(ok.json()["scores"]), engine.score(P3, [3, 1], **FAST), atol=1e-5, rtol=0)
    assert 'status="500"' not in metrics


def test_the_key_is_checked_before_the_body(engine):
    bad_json = ("raw", S, b"{not json", JSON)

    async def go():
        async with served(engine, api_key="s3cret", max_body_bytes=2000) as c:
            return [
                await send(c, bad_json),  # no key, malformed body
                await send(c, ("raw", S, b"x" * 5000, {"content-type": "text/plain"})),  # no key, oversize, wrong type
                await send(c, ("raw", S, b"{}", JSON | {"authorization": "Bearer wrong"})),
                await send(c, ("raw", S, b"{}", JSON | {"authorization": "Basic s3cret"})),
                await send(c, ("method", "GET", "/v1/info")),
                await send(c, ("raw", S, b"{not json", JSON | {"authorization": "Bearer s3cret"})),  # keyed: now 400
                await c.post(S, json={"prompt": P3, "seeds": [1], "settings": FAST},
                             headers={"authorization": "bearer s3cret"}),  # the scheme is case-insensitive
                await c.get("/healthz"),  # not under /v1: open
            ]

    *refused, keyed_bad, ok, health = run(go())
    for r in refused:
        check(r, 401, "authorization", ("header", "authorization"), r.request if hasattr(r, "_request") else "401")
        assert r.headers["www-authenticate"] == "Bearer"
    check(keyed_bad, 400, "not valid JSON", (), "keyed malformed")
    assert ok.status_code == 200 and health.status_code == 200


def test_slow_body_408_timeout_504_disconnect_counted(engine):
    async def go():
        async with served(engine, body_timeout_s=0.3, request_timeout_s=0.05) as c:

            async def stall():
                await asyncio.sleep(30)

            slow = await asgi(c, "POST", S, [(b"content-type", b"application/json")], [b'{"prompt": "x", '], stall, partial=True)
            late = await c.post(S, json={"prompt": P3, "seeds": list(range(64)), "settings": {"steps": 10}})
            body = json.dumps({"prompt": P3, "seeds": list(range(8)), "settings": {"steps": 10}}).encode()
            c.service.config.request_timeout_s = 30

            async def leave():
                await asyncio.sleep(0.05)
                return {"type": "http.disconnect"}

            gone = await asgi(c, "POST", S, [(b"content-type", b"application/json")], [body], leave)
            m = c.service.metrics
            return slow, late, gone, m.cancelled.labels("disconnect")._value.get(), m.cancelled.labels("timeout")._value.get()

    slow, late, gone, disconnects, timeouts = run(go())
    check(slow, 408, "--body-timeout", ("body",), "slow body")
    check(late, 504, "--timeout", (), "timeout")
    assert gone.status_code in (0, 499) and disconnects == 1 and timeouts == 1
