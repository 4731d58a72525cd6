"""The server's door (pure ASGI, in front of every route): what can be refused before a route runs is refused
here, in this order, each with the one error body (`noisefast.serve.problems`), and every answer is counted.

1. the header block: more than ``--max-headers`` fields or ``--max-header-bytes`` bytes → 431 (uvicorn's h11
   parser is bounded by the same byte count, so a huge header never reaches memory whole);
2. the API key (``Authorization: Bearer KEY`` on /v1/*) → 401 — before the body is read, so a request without
   the key learns nothing from a malformed body;
3. a POST to a /v1 route that takes a body must say ``Content-Type: application/json`` (UTF-8) → else 415;
4. the body, read here whole: over ``--max-body-bytes`` (by Content-Length, or counted as a chunked body
   arrives) → 413; not all there within ``--body-timeout`` → 408; a client that leaves meanwhile gets nothing;
5. such a body must be UTF-8 and JSON → else 400 naming the byte or the line and column.

The route then reads the buffered body; after it, ``receive()`` is the client's again (``http.disconnect`` when
it leaves: the batcher cancels the request's rows).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time

from noisefast.serve import problems as P

POSTS = ("/v1/score", "/v1/select", "/v1/optimize", "/v1/generate")  # the routes that take a JSON body
ENDPOINTS = (*POSTS, "/v1/info", "/healthz", "/readyz", "/metrics")
BODY_METHODS = (b"POST", b"PUT", b"PATCH")


class _Refused(Exception):
    def __init__(self, status: int, problem: dict, headers: dict | None = None):
        self.status, self.problem, self.headers = status, problem, headers


class _Gone(Exception):
    pass


def authorized(headers: list[tuple[bytes, bytes]], key: str) -> bool:
    """Whether the request carries ``Authorization: Bearer KEY`` (constant-time comparison)."""
    given = next((v for k, v in headers if k.lower() == b"authorization"), b"").decode("latin-1")
    scheme, _, token = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"), key.encode("utf-8"))


class Guard:
    """See the module docstring. ``service``: its ``config`` (limits, key) and ``metrics``."""

    def __init__(self, app, service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t, status = time.perf_counter(), [499]
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"

        async def tracked(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            self._check_head(scope)
            if _has_body(scope):
                data = await self._read_body(scope, receive)
                receive = _replay(data, receive)
            await self.app(scope, receive, tracked)
        except _Refused as r:
            await P.send(tracked, r.status, [r.problem], r.headers)
        except _Gone:
            pass
        except Exception:  # a bug: the 500 is written outside (Starlette's ServerErrorMiddleware); count it as one
            status[0] = 500
            raise
        finally:
            self.service.metrics.observe_request(endpoint, status[0], time.perf_counter() - t)

    # --- 1–3: the request line and headers ----------------------------------------------------------------------
    def _check_head(self, scope) -> None:
        c = self.service.config
        headers = scope.get("headers") or []
        if len(headers) > c.max_headers:
            raise _Refused(431, P.problem("headers_too_large", f"{len(headers)} header fields; this server takes at "
                                          f"most {c.max_headers} (--max-headers)", ["header"]))  # fmt: skip
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(k) + len(v) + 4 for k, v in headers)
        if size > c.max_header_bytes:
            raise _Refused(431, P.problem("headers_too_large", f"{size} bytes of request line and headers; this "
                                          f"server takes at most {c.max_header_bytes} (--max-header-bytes)",
                                          ["header"]))  # fmt: skip
        v1 = scope.get("path", "").startswith("/v1/")
        if v1 and c.api_key is not None and not authorized(headers, c.api_key):
            raise _Refused(401, P.problem("unauthorized", "authorization: missing or wrong API key (send "
                                          "'Authorization: Bearer KEY')", ["header", "authorization"]),
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        if _json_route(scope):
            ctype = _header(headers, b"content-type")
            if not _is_json(ctype):
                raise _Refused(415, P.problem("content_type", f"content-type must be application/json (UTF-8), got "
                                              f"{P.excerpt(ctype) if ctype else 'none'}", ["header", "content-type"]))  # fmt: skip
        length = _header(headers, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > c.max_body_bytes):
            raise _Refused(413, self._too_large(length if length.isdigit() else None))

    def _too_large(self, size: str | None) -> dict:
        limit = self.service.config.max_body_bytes
        got = f"{size} bytes" if size else "a body"
        return P.problem("body_too_large", f"{got} is over this server's limit of {limit} bytes (--max-body-bytes)",
                         ["body"])  # fmt: skip

    # --- 4–5: the body --------------------------------------------------------------------------------------------
    async def _read_body(self, scope, receive) -> bytes:
        c = self.service.config
        deadline, chunks, size = time.monotonic() + c.body_timeout_s, [], 0
        while True:
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except (asyncio.TimeoutError, TimeoutError):
                raise _Refused(408, P.problem("body_timeout", f"the body did not arrive within {c.body_timeout_s:g} s "
                                              f"(--body-timeout); {size} bytes came", ["body"]),
                               {"Connection": "close"}) from None  # fmt: skip
            if msg["type"] == "http.disconnect":
                raise _Gone
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > c.max_body_bytes:
                raise _Refused(413, self._too_large(None), {"Connection": "close"})
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        data = b"".join(chunks)
        if _json_route(scope):
            _check_json(data)
        return data


def _check_json(data: bytes) -> None:
    if not data.strip():
        raise _Refused(400, P.problem("json_invalid", "the body is empty: send a JSON object", ["body"]))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Refused(400, P.problem("body_encoding", f"the body is not valid UTF-8: byte 0x{data[e.start]:02x} at "
                                      f"offset {e.start}", ["body"])) from None  # fmt: skip
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise _Refused(400, P.problem("json_invalid", f"the body is not valid JSON: {e.msg} at line {e.lineno} "
                                      f"column {e.colno}", ["body"])) from None  # fmt: skip
    except RecursionError:
        raise _Refused(400, P.problem("json_invalid", "the body nests arrays or objects too deeply to parse",
                                      ["body"])) from None  # fmt: skip


def _json_route(scope) -> bool:
    return scope.get("method") == "POST" and scope.get("path", "") in POSTS


def _header(headers, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), None)


def _is_json(ctype: str | None) -> bool:
    if not ctype:
        return False
    media, *params = [p.strip().lower() for p in ctype.split(";")]
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        return False
    charset = next((p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")), "utf-8")
    return charset in ("utf-8", "utf8")


def _has_body(scope) -> bool:
    headers = scope.get("headers") or []
    length = _header(headers, b"content-length")
    return (scope.get("method", "").encode() in BODY_METHODS or _header(headers, b"transfer-encoding") is not None
            or (length is not None and length != "0"))  # fmt: skip


def _replay(data: bytes, receive):
    sent = [False]

    async def replayed():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": data, "more_body": False}
        return await receive()

    return replayed


__all__ = ["ENDPOINTS", "Guard", "authorized"]
