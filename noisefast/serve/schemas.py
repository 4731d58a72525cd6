"""The HTTP API's request and response bodies (pydantic v2): what /openapi.json documents.

Requests refuse unknown fields (a typo such as ``"seed"`` for ``"seeds"`` is a 422 naming it, never a
silently ignored option). The service limits (`Limits`: seeds per request, steps, image side, iterations)
are checked by `check_limits` after parsing, so the configured values name the field in the 422 too.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from noisefast.defaults import DEFAULT_NUM_CANDIDATES

from noisefast.params import OPTIMIZE, SEED_LIMIT

Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedRange(Strict):
    """``range(start, stop)``: stop exclusive."""

    start: Seed = 0
    stop: Annotated[int, Field(ge=1, le=SEED_LIMIT)]

    @model_validator(mode="after")
    def _ordered(self):
        if self.stop <= self.start:
            raise ValueError(f"stop ({self.stop}) must be greater than start ({self.start}); stop is exclusive")
        return self


class SettingsIn(Strict):
    """Per-request sampling settings; what is not given comes from the model's defaults."""

    height: Annotated[int, Field(ge=1)] | None = None
    width: Annotated[int, Field(ge=1)] | None = None
    steps: Annotated[int, Field(ge=1)] | None = None
    inversion_steps: Annotated[int, Field(ge=1)] | None = None
    guidance_scale: Annotated[float, Field(allow_inf_nan=False)] | None = None
    inversion_guidance_scale: Annotated[float, Field(allow_inf_nan=False)] | None = None

    def overrides(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


Prompt = Annotated[str, Field(min_length=1, max_length=2000)]


class ScoreIn(Strict):
    prompt: Prompt
    seeds: list[Seed] | SeedRange = Field(default_factory=lambda: SeedRange(start=0, stop=DEFAULT_NUM_CANDIDATES),
                                          description=f"a list of seeds or {{start, stop}} (default "
                                                      f"0..{DEFAULT_NUM_CANDIDATES - 1})")  # fmt: skip
    negative_prompt: Annotated[str, Field(max_length=2000)] | None = None
    settings: SettingsIn = Field(default_factory=SettingsIn)

    def seed_list(self) -> list[int]:
        s = self.seeds
        return list(range(s.start, s.stop)) if isinstance(s, SeedRange) else list(s)

    def seed_count(self) -> int:
        s = self.seeds
        return s.stop - s.start if isinstance(s, SeedRange) else len(s)


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


_O = OPTIMIZE


class OptimizeIn(Strict):
    prompt: Prompt
    seed: Seed
    iterations: Annotated[int, Field(ge=_O["iterations"].lo, le=_O["iterations"].hi)] = _O["iterations"].default
    lr: Annotated[float, Field(ge=_O["lr"].lo, le=_O["lr"].hi, allow_inf_nan=False)] | None = None
    momentum: Annotated[float, Field(ge=_O["momentum"].lo, le=_O["momentum"].hi)] = _O["momentum"].default
    target: Annotated[float, Field(ge=_O["target"].lo, le=_O["target"].hi)] | None = None
    renorm: bool | None = None
    negative_prompt: Annotated[str, Field(max_length=2000)] | None = None
    settings: SettingsIn = Field(default_factory=SettingsIn)


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


class GenerateIn(Strict):
    prompt: Prompt
    seed: Seed | None = None
    noise: Annotated[str, Field(max_length=64_000_000)] | None = Field(
        None, description="base64 safetensors holding one tensor [1, C, H, W] or [C, H, W] (or the 'best' "
                          "tensor of an /v1/optimize answer)")  # fmt: skip
    negative_prompt: Annotated[str, Field(max_length=2000)] | None = None
    settings: SettingsIn = Field(default_factory=SettingsIn)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.seed is None) == (self.noise is None):
            raise ValueError("give exactly one of seed or noise")
        return self


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


class ErrorOut(BaseModel):
    detail: str | list


__all__ = ["ErrorOut", "GenerateIn", "GenerateOut", "OptimizeIn", "OptimizeOut", "ScoreIn", "ScoreOut", "SeedRange",
           "SelectOut", "SettingsIn"]  # fmt: skip
