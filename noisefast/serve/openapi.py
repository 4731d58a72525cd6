"""What /openapi.json and /docs say: the published contract is the server's behaviour.

- every status the server answers, per operation, with its body (`noisefast.serve.schemas.ErrorOut` for every
  refusal: 400 malformed body, 401 key, 408 body too slow, 413 body too large, 415 content type, 422 invalid
  or over a limit, 429 queue full, 431 headers too large, 503 shutting down, 504 timed out);
- the request models carry this server's limits (`noisefast.serve.inputs`); once the model is loaded the image
  sides also get the model's own bounds (``multipleOf`` its spatial factor, ``maximum`` its largest side);
- a ``bearer`` security scheme on /v1/* when the server has an API key;
- /metrics as ``text/plain`` (Prometheus' text format);
- /docs (Swagger UI) and /redoc served from the files of the ``fastapi-offline`` package (in the ``[serve]``
  extra), so they work on a host without internet; without that package they are off (404) rather than
  blank pages pulling scripts from a CDN — /openapi.json is served either way.
"""

from __future__ import annotations

from pathlib import Path

from noisefast.serve.schemas import ErrorOut

ERRORS = {
    400: "the body is not UTF-8 JSON (type json_invalid, body_encoding)",
    401: "missing or wrong API key (type unauthorized; send 'Authorization: Bearer KEY')",
    408: "the body did not arrive within --body-timeout (type body_timeout)",
    413: "the body is over --max-body-bytes (type body_too_large)",
    415: "the body is not application/json (type content_type)",
    422: "a field is invalid or over a limit (pydantic types, limit, cost_limit, engine); loc names it",
    429: "the queue is full (type queue_full); Retry-After says when to retry",
    431: "more header fields or bytes than --max-headers / --max-header-bytes (type headers_too_large)",
    503: "the server is shutting down or not ready (type shutting_down)",
    504: "the request did not finish within --timeout (type timeout); its work was stopped",
}
BODY_STATUSES = (400, 408, 413, 415, 422, 429, 431, 503, 504)  # a POST with a JSON body
PLAIN_STATUSES = (431,)


def error_responses(statuses, *, key: bool) -> dict:
    out = {s: {"model": ErrorOut, "description": ERRORS[s]} for s in statuses}
    if key:
        out[401] = {"model": ErrorOut, "description": ERRORS[401],
                    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}}  # fmt: skip
    if 429 in out:
        out[429]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return out


def _image_bounds(schema: dict, multiple: int, top: int) -> None:
    props = schema.get("components", {}).get("schemas", {}).get("SettingsIn", {}).get("properties", {})
    for name in ("height", "width"):
        for branch in props.get(name, {}).get("anyOf", []):
            if branch.get("type") == "integer":
                branch.update(minimum=multiple, maximum=top, multipleOf=multiple)


def _tidy(node) -> None:
    """Integral bounds of integer fields as JSON integers (pydantic writes ``"minimum": 1.0`` for a constrained
    `noisefast.serve.schemas.IntIn`), error bodies as application/json whatever the route's media type."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if isinstance(node.get(k), float) and node[k].is_integer():
                    node[k] = int(node[k])
        content = node.get("content")
        if isinstance(content, dict) and "text/plain" in content and "ErrorOut" in str(content["text/plain"]):
            content["application/json"] = content.pop("text/plain")
        for v in node.values():
            _tidy(v)
    elif isinstance(node, list):
        for v in node:
            _tidy(v)


def _exact_models(schema: dict, models) -> None:
    """The request models' schemas as pydantic writes them: FastAPI's OpenAPI model stores bounds as floats, and
    2**63 − 2048 must stay that integer (JSON Schema validators compare integers exactly)."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (models.score, models.optimize, models.generate):
        exact = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in {**exact.pop("$defs", {}), model.__name__: exact}.items():
            if name in comps:
                comps[name] = sub


def document(app, service, models) -> None:
    """``app.openapi`` with the request ``models``' exact schemas, the security scheme, the model's image bounds and
    the limits (see the module docstring); recomputed until the model is loaded, then kept."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _tidy(schema)
        _exact_models(schema, models)
        c = service.config
        schema["info"]["x-noisefast-limits"] = c.limits()
        if c.api_key is not None:
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "--api-key / $NOISEFAST_API_KEY"}}
            for path, ops in schema["paths"].items():
                if path.startswith("/v1/"):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
        if service.engine is not None:
            _image_bounds(schema, *service.image_bounds())
            app.openapi_schema = schema
        return schema

    app.openapi = openapi


def offline_assets() -> Path | None:
    """The folder of Swagger UI's and ReDoc's files (the ``fastapi-offline`` package), None when not installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def install_docs(app) -> bool:
    """/docs and /redoc from local files (see the module docstring); False (both off) without them."""
    folder = offline_assets()
    if folder is None:
        return False
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=str(folder)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} — Swagger UI",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")  # fmt: skip

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} — ReDoc",
                              redoc_js_url="/docs-assets/redoc.standalone.js",
                              redoc_favicon_url="/docs-assets/favicon.png", with_google_fonts=False)  # fmt: skip

    return True


__all__ = ["BODY_STATUSES", "ERRORS", "PLAIN_STATUSES", "document", "error_responses", "install_docs", "offline_assets"]
