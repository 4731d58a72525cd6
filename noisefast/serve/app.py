"""The FastAPI app: thin HTTP over `noisefast.serve.service.Service` (OpenAPI at /openapi.json and /docs).

    POST /v1/score      {"prompt", "seeds": [..] | {"start", "stop"}, "settings"?}  → {"seeds", "scores"}
    POST /v1/select     same → best/worst seed and score, every seed sorted most → least stable, "source"
    POST /v1/optimize   {"prompt", "seed", "iterations", ...} → stability curve, noise (base64 safetensors)
    POST /v1/generate   {"prompt", "seed" | "noise"} → PNG (base64 in JSON; raw with Accept: image/png)
    GET  /v1/info       the engine configuration in effect (model, device, dtype, backend, batch size, threads,
                        fast path) and the server's limits
    GET  /healthz  /readyz  /metrics

The answers are `noisefast.workflows`' reports (``as_dict()``), field for field what the CLI writes to
``report.json``: /v1/score lists seeds in the order asked, /v1/select ranks them most → least stable.

Errors: a `noisefast.errors.NoisefastError` answers its ``http_status`` with ``{"detail": message}``
(limits on a field: 422 with its ``loc``, like pydantic's); a full queue 429 + Retry-After; a request
over its time 504; a body over ``max_body_bytes`` 413; a bad or missing key 401. Anything else is a bug:
500 with the exception's type only.

No ``from __future__ import annotations`` here: Ray Serve pickles the app into each replica, and FastAPI must
see the route parameters' real classes (string annotations would turn the bodies into query parameters).
"""

import hmac
import math
import time
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from noisefast.errors import NoisefastError
from noisefast.serve.batcher import ClientGone, QueueFull
from noisefast.serve.schemas import ErrorOut, GenerateIn, GenerateOut, OptimizeIn, OptimizeOut, ScoreIn, ScoreOut, SelectOut
from noisefast.serve.service import FieldLimit, ServeConfig, Service

ENDPOINTS = ("/v1/score", "/v1/select", "/v1/optimize", "/v1/generate", "/v1/info", "/healthz", "/readyz", "/metrics")
ERRORS = {s: {"model": ErrorOut} for s in (401, 413, 422, 429, 503, 504)}


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI: refuses bodies over the limit (413) and records every request's status and latency."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, t, status = self.service.config.max_body_bytes, time.perf_counter(), [500]
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if length is not None and (not length.isdigit() or int(length) > limit):
                status[0] = 413
                return await _send_json(send, 413, {"detail": f"the body is over this server's limit of {limit} bytes"})
            seen = [0]

            async def counted():
                msg = await receive()
                seen[0] += len(msg.get("body", b""))
                if seen[0] > limit:
                    raise _BodyTooLarge
                return msg

            async def tracked(msg):
                if msg["type"] == "http.response.start":
                    status[0] = msg["status"]
                await send(msg)

            try:
                await self.app(scope, counted, tracked)
            except _BodyTooLarge:
                status[0] = 413
                await _send_json(send, 413, {"detail": f"the body is over this server's limit of {limit} bytes"})
        finally:
            self.service.metrics.observe_request(endpoint, status[0], time.perf_counter() - t)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects: once the body is read, an ASGI server's ``receive()`` answers only
    ``http.disconnect`` (as Starlette's StreamingResponse listens for it) — no polling per waiting request."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _send_json(send, status: int, body: dict) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": data})


def create_app(config: ServeConfig | None = None, *, engine=None, service: Service | None = None) -> FastAPI:
    """The app; the model loads at start-up (lifespan) unless ``engine`` or a started ``service`` is given."""
    config = config or ServeConfig()
    svc = service or Service(config, engine)
    own = service is None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if own:
            svc.load()
            await svc.warm_up()
        try:
            yield
        finally:
            if own:
                svc.stop()  # after uvicorn's graceful shutdown let the in-flight requests finish

    app = FastAPI(title="noisefast", version=_version(), lifespan=lifespan, redirect_slashes=False,
                  description="Diffusion noise selection and optimization by inversion stability.")  # fmt: skip
    app.state.service = svc
    app.add_middleware(GuardMiddleware, service=svc)

    def authorize(request: Request) -> None:
        key = svc.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise _UnauthorizedError()

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=ERRORS)

    @v1.post("/score", response_model=ScoreOut)
    async def score(req: ScoreIn, request: Request):
        """s(ε) = cos(ε, I(D(ε))) of each seed's noise, in the order asked."""
        return await svc.score(req, lambda: _client_gone(request))

    @v1.post("/select", response_model=SelectOut)
    async def select(req: ScoreIn, request: Request):
        """Algorithm 1: every seed scored, sorted most → least stable (from the seed bank when it holds them)."""
        return await svc.select(req, lambda: _client_gone(request))

    @v1.post("/optimize", response_model=OptimizeOut)
    async def optimize(req: OptimizeIn, request: Request):
        """Algorithm 2 on one seed's noise: the stability curve and the noise (base64 safetensors)."""
        return await svc.optimize(req, lambda: _client_gone(request))

    @v1.post("/generate", response_model=GenerateOut,
             responses={200: {"content": {"image/png": {}, "application/json": {}}}})  # fmt: skip
    async def generate(req: GenerateIn, request: Request):
        """D(ε) decoded: PNG as base64 JSON, or raw with ``Accept: image/png``."""
        out, png = await svc.generate(req, lambda: _client_gone(request))
        if "image/png" in request.headers.get("accept", ""):
            return Response(png, media_type="image/png")
        return out

    @v1.get("/info")
    async def info():
        """The engine configuration in effect (as reports and screen manifests record it) and the server's limits."""
        return svc.info()

    app.include_router(v1)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        ok = svc.ready and svc.batcher is not None and svc.batcher.alive
        return JSONResponse({"ready": ok, "model": svc.config.engine.model}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        body, ctype = svc.metrics.render()
        return Response(body, media_type=ctype)

    @app.exception_handler(_UnauthorizedError)
    async def on_unauthorized(request, exc):
        return JSONResponse({"detail": "missing or wrong API key (Authorization: Bearer KEY)"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    @app.exception_handler(NoisefastError)
    async def on_error(request, exc: NoisefastError):
        if isinstance(exc, ClientGone):
            return Response(status_code=499)
        headers = {}
        if isinstance(exc, QueueFull):
            headers["Retry-After"] = str(math.ceil(exc.retry_after))
        if isinstance(exc, FieldLimit):
            body = {"detail": [{"loc": list(exc.loc), "msg": str(exc), "type": "limit"}]}
        else:
            body = {"detail": str(exc)}
        return JSONResponse(body, status_code=exc.http_status, headers=headers)

    @app.exception_handler(Exception)
    async def on_bug(request, exc: Exception):
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    return app


class _UnauthorizedError(Exception):
    pass



def _version() -> str:
    from noisefast import __version__

    return __version__


__all__ = ["ENDPOINTS", "create_app"]
