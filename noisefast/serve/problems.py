"""One error body for every answer that is not a success, whoever refuses the request:

    {"error": {"type": "less_than_equal", "loc": ["body", "settings", "steps"],
               "msg": "settings.steps: Input should be less than or equal to 100", "input": "5000"},
     "errors": [ …every problem found, at most 20… ]}

``msg`` always starts with the field (dotted: ``settings.steps``, ``seeds[3]``) or names the limit
(``--max-cost``, ``--max-body-bytes``); ``input`` is a short excerpt (≤ 80 characters) of the offending value,
never the whole input. The ASGI guard (`noisefast.serve.guard`), pydantic's validation, the routes' 404/405 and
the Engine's errors (`noisefast.errors.NoisefastError`: its ``field`` becomes the ``loc``) all answer through
`problem` and `response`; an exception that is none of these is a bug: 500 with its type only.
"""

from __future__ import annotations

import json
import math

from noisefast.params import SETTINGS
from noisefast.serve.inputs import SEED_TAGS

EXCERPT_CHARS = 80
MAX_PROBLEMS = 20
_NO_INPUT = object()

# pydantic's messages for these types do not say what the field is; ours do
MESSAGES = {"extra_forbidden": "unknown field (not part of this request; see /openapi.json)",
            "model_attributes_type": "must be a JSON object", "dict_type": "must be a JSON object",
            "string_unicode": "must be valid Unicode text (it holds a lone surrogate such as \\ud800)"}  # fmt: skip


def excerpt(value) -> str | None:
    """At most ``EXCERPT_CHARS`` characters of ``value`` as JSON-ish text; lone surrogates escaped, NaN as NaN."""
    if value is _NO_INPUT:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, float) and not math.isfinite(value):
        text = str(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=lambda v: type(v).__name__)
        except (ValueError, TypeError, RecursionError):
            text = type(value).__name__
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def dotted(loc) -> str:
    """``["body", "seeds", 3]`` → ``seeds[3]``; ``["body", "settings", "steps"]`` → ``settings.steps``."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "header", "query") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or ("the body" if loc and loc[0] == "body" else "the request")


def problem(type_: str, msg: str, loc=(), value=_NO_INPUT) -> dict:
    out = {"type": type_, "loc": list(loc), "msg": msg}
    if value is not _NO_INPUT:
        out["input"] = excerpt(value)
    return out


def body(problems: list[dict]) -> dict:
    problems = problems[:MAX_PROBLEMS]
    return {"error": problems[0], "errors": problems}


def encode(problems: list[dict]) -> bytes:
    return json.dumps(body(problems), ensure_ascii=False, allow_nan=False).encode("utf-8")


def response(status: int, problems: list[dict], headers: dict | None = None):
    from starlette.responses import Response

    return Response(encode(problems), status_code=status, headers=headers, media_type="application/json")


async def send(send_, status: int, problems: list[dict], headers: dict | None = None) -> None:
    """The same answer from raw ASGI (the guard, before any route runs)."""
    data = encode(problems)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send_({"type": "http.response.start", "status": status, "headers": raw})
    await send_({"type": "http.response.body", "body": data})


# --- what refuses a request, as problems --------------------------------------------------------------------------
def _clean_loc(loc) -> list:
    """pydantic's loc without the seeds union's tags: ("body", "seeds", "list", 3) → ["body", "seeds", 3]."""
    out = []
    for i, part in enumerate(loc):
        if part in SEED_TAGS and i > 0 and loc[i - 1] == "seeds":
            continue
        out.append(part)
    return out


def from_validation(errors) -> tuple[int, list[dict]]:
    """pydantic's errors (`fastapi.exceptions.RequestValidationError.errors()`) → (status, problems)."""
    problems, status = [], 422
    for e in errors:
        loc = _clean_loc(e.get("loc", ()))
        kind = e.get("type", "invalid")
        if kind == "json_invalid":  # FastAPI's own JSON parse (the guard parses first; kept for safety)
            status = 400
        msg = MESSAGES.get(kind, e.get("msg", "invalid"))
        problems.append(problem(kind, f"{dotted(loc)}: {msg}", loc, e.get("input", _NO_INPUT)))
    return status, problems or [problem("invalid", "the request is invalid")]


def loc_of(field: str | None) -> list:
    """Where a field named by the Engine (`noisefast.errors.NoisefastError.field`) sits in a request body."""
    if not field:
        return []
    return ["body", "settings", field] if field in SETTINGS else ["body", field]


def from_error(exc) -> tuple[int, list[dict], dict]:
    """A `noisefast.errors.NoisefastError` → (status, problems, headers)."""
    from noisefast.errors import BackendUnavailableError, LimitError
    from noisefast.serve.batcher import QueueFull, RequestTimeout, ShuttingDown

    loc = list(getattr(exc, "loc", None) or loc_of(getattr(exc, "field", None)))
    kind = getattr(exc, "kind", None) or next(
        (k for cls, k in ((QueueFull, "queue_full"), (RequestTimeout, "timeout"), (ShuttingDown, "shutting_down"),
                          (LimitError, "limit"), (BackendUnavailableError, "unavailable")) if isinstance(exc, cls)),
        "engine")  # fmt: skip
    msg = str(exc)
    if loc and not msg.startswith(dotted(loc)):
        msg = f"{dotted(loc)}: {msg}"
    headers = {}
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(math.ceil(exc.retry_after))
    return exc.http_status, [problem(kind, msg, loc)], headers


def from_http(status: int, method: str, path: str, headers: dict | None) -> list[dict]:
    """Starlette's 404 / 405 (and any other HTTPException of the framework) as problems."""
    if status == 404:
        return [problem("not_found", f"no such path: {excerpt(path)} (see /openapi.json)", ["path"])]
    if status == 405:
        allowed = (headers or {}).get("Allow", "")
        return [problem("method_not_allowed", f"method {method} is not allowed on {excerpt(path)}; allowed: {allowed}",
                        ["method"])]  # fmt: skip
    return [problem("http", f"HTTP {status}", [])]


__all__ = ["body", "dotted", "encode", "excerpt", "from_error", "from_http", "from_validation", "loc_of", "problem",
           "response", "send"]  # fmt: skip
