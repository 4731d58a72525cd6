"""The HTTP API's answer bodies (pydantic v2) and the strict scalar types the requests are built from.

The request bodies themselves depend on the running server's limits (``--max-seeds 64`` is ``maxItems: 64``
in /openapi.json): `noisefast.serve.inputs.request_models` builds them from these types.

Strict scalars (what JSON says is what the field gets — no lax coercion):

- `Int`: a JSON integer (an integral float such as ``3.0`` is the integer 3, as JSON Schema counts it);
  never a boolean (``true`` is not seed 1), never a string (``"3"`` is not 3), never 3.5 or ``1e400``;
- `Float`: a finite JSON number (``NaN``, ``Infinity`` and ``1e400`` — which Python's JSON parser reads as
  infinity — are refused); never a boolean or a string;
- `Bool`: ``true`` or ``false`` only (``"yes"`` and ``1`` are refused);
- `Text`: a string of valid Unicode (a lone surrogate such as ``"\\ud800"`` is refused).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError


def _strict_int(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PydanticCustomError("int_type", "Input should be a valid integer (not a {kind})",
                                  {"kind": _json_kind(v)})  # fmt: skip
    if isinstance(v, float):
        if not math.isfinite(v):
            raise PydanticCustomError("finite_number", "Input should be a finite number")
        if not v.is_integer():
            raise PydanticCustomError("int_from_float", "Input should be a valid integer, got a number with a "
                                      "fractional part")  # fmt: skip
        return int(v)
    return v


def _valid_unicode(v: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PydanticCustomError("unicode", "Input should be valid Unicode text (a lone surrogate at index "
                                  "{index})", {"index": e.start}) from None  # fmt: skip
    return v


def _json_kind(v: Any) -> str:
    return {bool: "boolean", str: "string", list: "array", dict: "object", type(None): "null"}.get(type(v), type(v).__name__)


def IntIn(**field) -> type:
    """`Int` with pydantic ``Field`` keywords (bounds, description). The JSON schema states the bounds as exact
    integers (pydantic would write them as floats, and 2**63 − 4 as a float is 2**63)."""
    bounds = {key: field[k] for k, key in (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusiveMinimum"),
                                           ("lt", "exclusiveMaximum")) if k in field}  # fmt: skip
    extra = field.pop("json_schema_extra", None) or {}
    return Annotated[int, Field(**field, json_schema_extra={**bounds, **extra}), BeforeValidator(_strict_int)]


def TextIn(**field) -> type:
    """`Text` with pydantic ``Field`` keywords (``min_length``, ``max_length``, description)."""
    return Annotated[str, Field(strict=True, **field), AfterValidator(_valid_unicode)]


Int = IntIn()
Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Bool = Annotated[bool, Field(strict=True)]
Text = TextIn()


# --- answers ---------------------------------------------------------------------------------------------------
class Timings(BaseModel):
    score_s: float | None = None
    seeds_per_s: float | None = None
    generate_s: float | None = None
    optimize_s: float | None = None
    s_per_step: float | None = None


class ScoreOut(BaseModel):
    """`noisefast.workflows.ScoreReport.as_dict`: seeds and scores in the order asked."""

    prompt: str
    seeds: list[int]
    scores: list[float | None]  # s(ε) per seed; null for a non-finite score
    best_seed: int
    best_score: float | None
    worst_seed: int
    worst_score: float | None
    complete: bool
    scored: int
    requested: int
    timings: Timings


class SelectOut(ScoreOut):
    """`noisefast.workflows.SelectReport.as_dict`: seeds and scores ranked most → least stable (as `Engine.select`)."""

    source: str  # "computed" | "bank" | "bank-any-prompt"


class OptimizeOut(BaseModel):
    """`noisefast.workflows.OptimizeReport.as_dict` and the noise."""

    prompt: str
    seeds: list[int] | None
    stability_before: list[float | None] | None  # s(ε_0), measured afresh
    stability_after: list[float | None] | None  # s(best ε), measured afresh (null when cancelled)
    history: list[list[float | None]]  # [steps_run + 1][1]: the optimiser's stability per step
    steps_run: int
    stop_reason: str
    complete: bool
    timings: Timings
    noise: str  # base64 of a safetensors file: tensors "initial", "best", "final" [1, C, H, W] float32
    noise_format: str = "safetensors+base64"


class GenerateOut(BaseModel):
    """`noisefast.workflows.GenerateReport.as_dict` and the image."""

    prompt: str
    seeds: list[int] | None  # null when generated from the given noise
    complete: bool
    timings: Timings
    width: int
    height: int
    image: str  # base64 PNG
    format: str = "png"


class ReadyOut(BaseModel):
    ready: bool
    model: str


class HealthOut(BaseModel):
    status: str


class Problem(BaseModel):
    """One thing wrong with a request."""

    type: str = Field(description="what kind of problem: a pydantic error type (int_type, finite_number, missing, "
                                  "extra_forbidden, less_than_equal, …) or one of json_invalid, body_encoding, "
                                  "content_type, body_too_large, body_timeout, headers_too_large, unauthorized, "
                                  "limit, cost_limit, engine, queue_full, timeout, shutting_down, not_found, "
                                  "method_not_allowed")  # fmt: skip
    loc: list[str | int] = Field(description="where: [\"body\", \"settings\", \"steps\"], [\"body\", \"seeds\", 3], "
                                             "[\"header\", \"authorization\"], or [] when nothing in particular")  # fmt: skip
    msg: str = Field(description="one line naming the field or limit and what was wrong")
    input: str | None = Field(None, description="a short excerpt (≤ 80 characters) of the offending value")


class ErrorOut(BaseModel):
    """Every 4xx/5xx body this server writes: ``error`` is the first problem, ``errors`` all of them (≤ 20)."""

    error: Problem
    errors: list[Problem]


__all__ = ["Bool", "ErrorOut", "Float", "GenerateOut", "HealthOut", "Int", "IntIn", "OptimizeOut", "Problem", "ReadyOut",
           "ScoreOut", "SelectOut", "Text", "TextIn", "Timings"]  # fmt: skip
