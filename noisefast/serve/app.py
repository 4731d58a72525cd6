"""The FastAPI app: thin HTTP over `noisefast.serve.service.Service` (OpenAPI at /openapi.json, docs at /docs).

    POST /v1/score      {"prompt", "seeds": [..] | {"start", "count"}, "settings"?}  → {"seeds", "scores"}
    POST /v1/select     same → best/worst seed and score, every seed sorted most → least stable, "source"
    POST /v1/optimize   {"prompt", "seed", "iterations", ...} → stability curve, noise (base64 safetensors)
    POST /v1/generate   {"prompt", "seed" | "noise"} → PNG (base64 in JSON; raw with Accept: image/png)
    GET  /v1/info       the engine configuration in effect (model, device, dtype, backend, batch size, threads,
                        fast path) and the server's limits
    GET  /healthz  /readyz  /metrics (Prometheus text)

The answers are `noisefast.workflows`' reports (``as_dict()``), field for field what the CLI writes to
``report.json``: /v1/score lists seeds in the order asked, /v1/select ranks them most → least stable.

The contract: the request models carry this server's limits (`noisefast.serve.inputs`), the door
(`noisefast.serve.guard`) refuses what it can before a route runs (headers, key, content type, body size and
time, UTF-8 JSON), and every refusal — the door's, pydantic's, a route's 404/405, the Engine's — is one error body
(`noisefast.serve.problems`) with the status /openapi.json documents (`noisefast.serve.openapi`). Anything
else is a bug: 500 with the exception's type only.

No ``from __future__ import annotations`` here: Ray Serve pickles the app into each replica, and FastAPI must
see the route parameters' real classes (string annotations would turn the bodies into query parameters).
"""

from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from noisefast.errors import NoisefastError
from noisefast.serve import problems as P
from noisefast.serve.batcher import ClientGone
from noisefast.serve.guard import ENDPOINTS, Guard
from noisefast.serve.openapi import BODY_STATUSES, PLAIN_STATUSES, document, error_responses, install_docs
from noisefast.serve.schemas import ErrorOut, GenerateOut, HealthOut, OptimizeOut, ReadyOut, ScoreOut, SelectOut
from noisefast.serve.service import ServeConfig, Service

METRICS_DOC = {200: {"description": "Prometheus text exposition format (version 0.0.4)",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}}  # fmt: skip


def create_app(config: ServeConfig | None = None, *, engine=None, service: Service | None = None) -> FastAPI:
    """The app; the model loads at start-up (lifespan) unless ``engine`` or a started ``service`` is given."""
    svc = service or Service(config or ServeConfig(), engine)
    own = service is None
    key = svc.config.api_key is not None
    M = svc.config.models()

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

    app = FastAPI(title="noisefast", version=_version(), lifespan=lifespan, redirect_slashes=False, docs_url=None,
                  redoc_url=None, description="Diffusion noise selection and optimization by inversion stability. "
                  "Every refusal is one error body (ErrorOut) naming the field or limit.")  # fmt: skip
    app.state.service = svc
    app.add_middleware(Guard, service=svc)
    posts = error_responses(BODY_STATUSES, key=key)
    v1 = APIRouter(prefix="/v1")

    @v1.post("/score", response_model=ScoreOut, responses=posts)
    async def score(req: M.score, request: Request):
        """s(ε) = cos(ε, I(D(ε))) of each seed's noise, in the order asked."""
        return await svc.score(req, lambda: _client_gone(request))

    @v1.post("/select", response_model=SelectOut, responses=posts)
    async def select(req: M.score, request: Request):
        """Algorithm 1: every seed scored, sorted most → least stable (from the seed bank when it holds them)."""
        return await svc.select(req, lambda: _client_gone(request))

    @v1.post("/optimize", response_model=OptimizeOut, responses=posts)
    async def optimize(req: M.optimize, request: Request):
        """Algorithm 2 on one seed's noise: the stability curve and the noise (base64 safetensors)."""
        return await svc.optimize(req, lambda: _client_gone(request))

    png = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}

    @v1.post("/generate", response_model=GenerateOut, responses=posts | png)
    async def generate(req: M.generate, request: Request):
        """D(ε) decoded: PNG as base64 JSON, or raw with ``Accept: image/png``."""
        out, image = await svc.generate(req, lambda: _client_gone(request))
        if "image/png" in request.headers.get("accept", ""):
            return Response(image, media_type="image/png")
        return out

    @v1.get("/info", responses=error_responses(PLAIN_STATUSES, key=key))
    async def info() -> dict:
        """The engine configuration in effect (as reports and screen manifests record it) and the server's limits."""
        return svc.info()

    app.include_router(v1)
    plain = error_responses(PLAIN_STATUSES, key=False)

    @app.get("/healthz", response_model=HealthOut, responses=plain)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyOut, responses=plain | {503: {"model": ReadyOut, "description": "not ready"}})
    async def readyz():
        ok = svc.ready and svc.batcher is not None and svc.batcher.alive
        return JSONResponse({"ready": ok, "model": svc.config.engine.model}, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses=plain | METRICS_DOC)
    async def metrics():
        body, ctype = svc.metrics.render()
        return Response(body, media_type=ctype)

    _install_handlers(app)
    install_docs(app)
    document(app, svc, M)
    return app


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, exc: RequestValidationError):
        status, problems = P.from_validation(exc.errors())
        return P.response(status, problems)

    @app.exception_handler(NoisefastError)
    async def on_error(request, exc: NoisefastError):
        if isinstance(exc, ClientGone):
            return Response(status_code=499)
        status, problems, headers = P.from_error(exc)
        return P.response(status, problems, headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        return P.response(exc.status_code, P.from_http(exc.status_code, request.method, request.url.path, headers), headers)

    @app.exception_handler(Exception)
    async def on_bug(request, exc: Exception):
        return P.response(500, [P.problem("internal", f"internal error ({type(exc).__name__}); this is a bug")])


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects: once the body is read, an ASGI server's ``receive()`` answers only
    ``http.disconnect`` (as Starlette's StreamingResponse listens for it) — no polling per waiting request."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _version() -> str:
    from noisefast import __version__

    return __version__


__all__ = ["ENDPOINTS", "ErrorOut", "create_app"]
