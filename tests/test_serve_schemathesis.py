"""The published schema is the behaviour: schemathesis (property-based, from /openapi.json) against the app, in
process (ASGI), every default check — no 5xx, every status and body documented, schema-valid requests accepted,
schema-invalid ones refused with a 4xx, the API key enforced where the schema says so.

The server runs with small limits (2 seeds, 1 + 1 steps, 4×4 images, 1 iteration) so every schema-valid request
is within its --max-cost and fast; the cost limit itself is the one refusal JSON Schema cannot state (a product of
fields), so it is exercised by test_serve_hostile instead. A few examples per operation, derandomized.
"""

import asyncio
import base64
import json
import os

import pytest
import torch

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import strategies as st  # noqa: E402

from _serve_helpers import P3  # noqa: E402
from noisefast.config import EngineConfig  # noqa: E402
from noisefast.serve.app import create_app  # noqa: E402
from noisefast.serve.service import ServeConfig, Service  # noqa: E402

KEY = "fuzz-key"
LIMITS = dict(max_seeds=2, max_steps=1, max_side=4, max_iterations=1)


def _noise(shape) -> str:
    from safetensors.torch import save

    return base64.b64encode(save({"noise": torch.randn(shape)})).decode()


# "format": "safetensors" — what JSON Schema cannot say about the noise field (base64 of a safetensors file of one
# finite [1, C, h, w] latent whose sides fit the server), told to the generator the way schemathesis takes it
schemathesis.openapi.format("safetensors", st.sampled_from([(1, 1, h, w) for h in (2, 4) for w in (2, 4)]).map(_noise))


@pytest.fixture(scope="module")
def app():
    from noisefast.pipeline import Engine

    torch.set_num_threads(1)
    engine = Engine.from_pretrained("builtin:digits")
    svc = Service(ServeConfig(engine=EngineConfig(), warmup=False, api_key=KEY, **LIMITS), engine).load()
    asyncio.run(svc.warm_up())  # ready: /readyz answers 200
    yield create_app(service=svc)
    svc.stop()


def _failures(recorder, phase) -> list[str]:
    out = []
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.failure_info is not None:
                case = recorder.cases[case_id].value
                body = json.dumps(case.body, default=str)[:300] if not isinstance(case.body, type(None)) else ""
                answer = recorder.interactions.get(case_id)
                answer = answer.response.content[:300] if answer is not None and answer.response else b""
                out.append(f"[{phase}] {recorder.label} {check.name}: {check.failure_info.failure.title} — "
                           f"{check.failure_info.failure.message[:300]} — {case.method} {case.path} {body} "
                           f"{case.headers} → {answer!r}")  # fmt: skip
    return out


def _run(schema, phases) -> tuple[list[str], set[int]]:
    """schemathesis' engine over ``schema`` (what ``schemathesis run`` drives) with these phases; every default
    check; (failures and errors, the statuses seen)."""
    from schemathesis.engine import events, from_schema

    schema.config.update(headers={"Authorization": f"Bearer {KEY}"})
    schema.config.generation.update(max_examples=3, deterministic=True, database="none")
    schema.config.phases.update(phases=phases)
    problems, statuses = [], set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            problems += _failures(event.recorder, event.phase)
            statuses |= {i.response.status_code for i in event.recorder.interactions.values() if i.response}
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            problems.append(f"{getattr(event, 'label', '')}: {event.value!r}")
    return problems, statuses


COSTLY = ["/v1/select", "/v1/optimize"]  # coverage phase with NOISEFAST_SLOW=1 (select shares /v1/score's body)


def test_schema_is_the_behaviour(app):
    """Every operation through the examples and fuzzing phases (positive and negative data, 3 examples each) and
    the coverage phase (boundaries, missing and wrong-typed fields, content-type probes, unsupported methods, a
    missing key: ~150 calls an operation), in process. The coverage phase of the costly operations — /v1/optimize
    (~0.3 s a call even at 1 + 1 steps) and /v1/select (/v1/score's body) — runs with NOISEFAST_SLOW=1.
    (schemathesis' pytest plugin is not used: its lazy fixture mode fails on pytest 9.2, ``Function._nodeid``.)"""
    full = os.environ.get("NOISEFAST_SLOW") == "1"
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    all_phases = ["examples", "coverage", "fuzzing", "stateful"]
    problems, statuses = _run(schema.exclude(path=COSTLY), all_phases)
    more, seen = _run(schema.include(path=COSTLY), all_phases if full else ["examples", "fuzzing"])
    problems, statuses = problems + more, statuses | seen
    assert not problems, "\n".join(sorted(set(problems)))
    assert {200, 401, 405, 415, 422} <= statuses, statuses  # it reached the model, the key check and the door


def test_published_limits_are_the_running_ones(app):
    """``--max-seeds 2`` is ``maxItems: 2``; the default iterations never exceed ``--max-iterations``; the model's
    spatial factor is ``multipleOf``; the key is a bearer scheme; /metrics is text."""
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()
    comps = spec["components"]["schemas"]
    seeds = comps["ScoreIn"]["properties"]["seeds"]["oneOf"]
    assert seeds[0]["maxItems"] == 2 and seeds[0]["minItems"] == 1 and seeds[0]["uniqueItems"] is True
    assert comps["SeedRange"]["properties"]["count"]["maximum"] == 2
    assert comps["SeedRange"]["properties"]["start"]["maximum"] == 2**63 - 2048  # exact, and exact as a double
    it = comps["OptimizeIn"]["properties"]["iterations"]
    assert it["maximum"] == 1 and it["default"] == 1  # the library's 100, held to the server's limit
    assert comps["SettingsIn"]["properties"]["steps"]["anyOf"][0]["maximum"] == 1
    height = next(b for b in comps["SettingsIn"]["properties"]["height"]["anyOf"] if b.get("type") == "integer")
    assert (height["multipleOf"], height["minimum"], height["maximum"]) == (2, 2, 4)
    assert comps["SettingsIn"]["properties"]["guidance_scale"]["anyOf"][0]["maximum"] == 1000
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/score"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    responses = spec["paths"]["/v1/generate"]["post"]["responses"]
    assert set(responses) >= {"200", "400", "401", "408", "413", "415", "422", "429", "431", "503", "504"}
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert len(comps["GenerateIn"]["oneOf"]) == 2  # exactly one of seed and noise
    assert json.dumps(spec, allow_nan=False)
