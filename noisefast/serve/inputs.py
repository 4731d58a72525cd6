"""The request bodies, built from the RUNNING server's limits: every bound a field has is declared on its model,
so /openapi.json publishes exactly what the server accepts (``--max-seeds 64`` → ``"maxItems": 64``).

Bounds, defaults and help texts come from `noisefast.params` (``SETTINGS``, ``OPTIMIZE``, ``SEED_LIMIT``): the
library, the command line and HTTP refuse the same values with the same names. The server's limits can only
tighten them (``--max-steps`` below ``MAX_STEPS``, ``--max-iterations`` below ``MAX_ITERATIONS``); a default
never exceeds them (``iterations`` defaults to the library's 100, or to ``--max-iterations`` when that is lower).

What JSON Schema cannot say is declared in words and checked by the Engine with the field named: an image side
must be a multiple of the model's spatial factor (`noisefast.serve.openapi` adds ``multipleOf`` once the model
is loaded), and a request's cost (`noisefast.serve.cost`) must fit ``--max-cost``.

No ``from __future__ import annotations``: the models are classes local to `request_models`, and pydantic
resolves their annotations from the values captured here.
"""

from dataclasses import dataclass
from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from noisefast.defaults import DEFAULT_NUM_CANDIDATES
from noisefast.params import MAX_ITERATIONS, MAX_STEPS, OPTIMIZE, SEED_LIMIT, SETTINGS
from noisefast.serve.schemas import Bool, Float, IntIn, TextIn

PROMPT_CHARS = 2000  # a prompt or negative prompt, in characters (SDXL's encoders read 77 tokens of it)
BODY_ROOM = 65_536  # bytes of a body besides its noise: two prompts of PROMPT_CHARS (≤ 12 bytes each as JSON), settings
SEED_TAGS = ("list", "range")  # the two spellings of ``seeds``; `noisefast.serve.problems` drops them from a loc


@dataclass(frozen=True)
class Models:
    """One server's request models (each a pydantic class with its limits built in)."""

    settings: type
    score: type
    optimize: type
    generate: type


class Closed(BaseModel):
    """A request object: an unknown field (a typo such as ``"seed"`` for ``"seeds"``) is refused, never ignored."""

    model_config = ConfigDict(extra="forbid")


def _seeds_form(v) -> str | None:
    if isinstance(v, list):
        return "list"
    if isinstance(v, (dict, BaseModel)):
        return "range"
    return None


def _unique(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        dup = next(s for i, s in enumerate(seeds) if s in seeds[:i])
        raise PydanticCustomError("unique_items", "seeds must be distinct: {seed} is listed twice", {"seed": dup})
    return seeds


def _param(p, *, hi=None, **extra) -> dict:
    """Field keywords for a `noisefast.params.Param`: its bounds (``hi`` tightens the upper one) and help."""
    kw = {"description": p.help, **extra}
    if p.lo is not None:
        kw["gt" if p.lo_open else "ge"] = p.lo
    top = p.hi if hi is None else (hi if p.hi is None else min(hi, p.hi))
    if top is not None:
        kw["le"] = top
    return kw


def request_models(*, max_seeds: int, max_steps: int, max_side: int, max_iterations: int, max_body_bytes: int,
                   max_cost: int) -> Models:  # fmt: skip
    """The request models of a server with these limits (`noisefast.serve.service.ServeConfig.limits`)."""
    from pydantic import AfterValidator

    S, O = SETTINGS, OPTIMIZE
    steps_hi = min(max_steps, MAX_STEPS)
    Seed = IntIn(ge=0, lt=SEED_LIMIT)
    start_room = max(2048, 1 << (max_seeds - 1).bit_length())  # JSON doubles near 2**63 are 1024 apart
    Prompt = TextIn(min_length=1, max_length=PROMPT_CHARS, description="the prompt (Unicode text)")
    Negative = TextIn(max_length=PROMPT_CHARS, description="the negative prompt (used where a step runs the "
                      "unconditional half)")  # fmt: skip
    cost_note = (f"A request whose cost (rows × UNet calls × latent pixels, see README) is over this server's "
                 f"--max-cost of {max_cost} is refused with 422 (type cost_limit).")  # fmt: skip

    class SettingsIn(Closed):
        """Per-request sampling settings; what is not given (or null) is the model's default."""

        height: IntIn(**_param(S["height"], hi=max_side)) | None = None
        width: IntIn(**_param(S["width"], hi=max_side)) | None = None
        steps: IntIn(**_param(S["steps"], hi=steps_hi)) | None = None
        inversion_steps: IntIn(**_param(S["inversion_steps"], hi=steps_hi)) | None = None
        guidance_scale: Annotated[Float, Field(**_param(S["guidance_scale"]))] | None = None
        inversion_guidance_scale: Annotated[Float, Field(**_param(S["inversion_guidance_scale"]))] | None = None

        def overrides(self) -> dict:
            return {k: v for k, v in self.model_dump().items() if v is not None}

    class SeedRange(Closed):
        """``count`` consecutive seeds from ``start``: start, start + 1, …, start + count − 1 (``start`` stops short
        of 2**63 by a power of two ≥ count, so the range stays in [0, 2**63) and the bound is exact as a double)."""

        start: IntIn(ge=0, le=SEED_LIMIT - start_room) = 0
        count: IntIn(ge=1, le=max_seeds)

        def seed_list(self) -> list[int]:
            return list(range(self.start, self.start + self.count))

    SeedList = Annotated[list[Seed], Field(min_length=1, max_length=max_seeds, json_schema_extra={"uniqueItems": True}),
                         AfterValidator(_unique)]  # fmt: skip
    Seeds = Annotated[
        Union[Annotated[SeedList, Tag("list")], Annotated[SeedRange, Tag("range")]],
        Discriminator(_seeds_form, custom_error_type="seeds_type",
                      custom_error_message="seeds must be a list of distinct seeds or {start, count}"),
    ]  # fmt: skip
    default_count = min(DEFAULT_NUM_CANDIDATES, max_seeds)

    class ScoreIn(Closed):
        __doc__ = f"Seeds to score under one prompt. {cost_note}"
        prompt: Prompt
        seeds: Seeds = Field(default_factory=lambda: SeedRange(start=0, count=default_count),
                             description=f"a list of distinct seeds in [0, 2**63) or {{start, count}} (default: "
                                         f"{{\"start\": 0, \"count\": {default_count}}})")  # fmt: skip
        negative_prompt: Negative | None = None
        settings: SettingsIn = Field(default_factory=SettingsIn)

        def seed_list(self) -> list[int]:
            s = self.seeds
            return s.seed_list() if isinstance(s, SeedRange) else list(s)

    iterations_default = min(O["iterations"].default, max_iterations, MAX_ITERATIONS)

    class OptimizeIn(Closed):
        __doc__ = f"Algorithm 2 on one seed's noise. {cost_note}"
        prompt: Prompt
        seed: Seed
        iterations: IntIn(**_param(O["iterations"], hi=max_iterations)) = iterations_default
        lr: Annotated[Float, Field(**_param(O["lr"]))] | None = None
        momentum: Annotated[Float, Field(**_param(O["momentum"]))] = O["momentum"].default
        target: Annotated[Float, Field(**_param(O["target"]))] | None = None
        renorm: Bool | None = Field(None, description="project ε back to ‖ε‖ = √D after each step (default: the "
                                                      "model's)")  # fmt: skip
        negative_prompt: Negative | None = None
        settings: SettingsIn = Field(default_factory=SettingsIn)

    noise_schema = {"format": "safetensors", "contentEncoding": "base64",
                    "contentMediaType": "application/octet-stream"}  # fmt: skip
    noise_chars = max(max_body_bytes - BODY_ROOM, 0)  # the rest of a body (two prompts, settings) fits beside it

    def _generate_one_of(schema: dict) -> None:
        """Exactly one of seed and noise (neither null); with noise, the image size is the noise's (no
        settings.height/width)."""
        for name in ("seed", "noise"):
            prop = schema["properties"][name]
            (kept,) = [b for b in prop.pop("anyOf") if b.get("type") != "null"]
            prop.update(kept)
            prop.pop("default", None)
        schema["oneOf"] = [
            {"required": ["seed"], "not": {"required": ["noise"]}},
            {"required": ["noise"], "not": {"required": ["seed"]},
             "properties": {"settings": {"properties": {"height": False, "width": False}}}},
        ]  # fmt: skip

    class GenerateIn(Closed):
        __doc__ = (f"D(ε) decoded, from a seed or from given noise (exactly one); with noise the image size is "
                   f"the noise's. {cost_note}")  # fmt: skip
        model_config = ConfigDict(extra="forbid", json_schema_extra=_generate_one_of)
        prompt: Prompt
        seed: Seed | None = None
        noise: TextIn(max_length=noise_chars, json_schema_extra=noise_schema) | None = Field(
            None, description="base64 of a safetensors file holding one tensor [1, C, h, w] or [C, h, w] (or the "
                              "'best' tensor of an /v1/optimize answer); the image is h·f × w·f pixels")  # fmt: skip
        negative_prompt: Negative | None = None
        settings: SettingsIn = Field(default_factory=SettingsIn)

        @field_validator("seed", "noise", mode="before")
        @classmethod
        def _not_null(cls, v, info):
            if v is None:  # leaving it out is how one says "not this one"
                raise PydanticCustomError("not_null", "{name} must not be null: leave it out to use the other "
                                          "source", {"name": info.field_name})  # fmt: skip
            return v

        @model_validator(mode="after")
        def _one_source(self):
            if (self.seed is None) == (self.noise is None):
                raise PydanticCustomError("one_of", "give exactly one of seed or noise")
            return self  # settings.height/width with noise: refused by the service, with their loc

    return Models(SettingsIn, ScoreIn, OptimizeIn, GenerateIn)


__all__ = ["Models", "PROMPT_CHARS", "SEED_TAGS", "request_models"]
