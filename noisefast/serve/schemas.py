"""The HTTP API's request and response bodies (pydantic v2): what /openapi.json documents.

Requests refuse unknown fields (a typo such as ``"seed"`` for ``"seeds"`` is a 422 naming it, never a
silently ignored option). The service limits (`Limits`: seeds per request, steps, image side, iterations)
are checked by `check_limits` after parsing, so the configured values name the field in the 422 too.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from noisefast.seeds import SEED_LIMIT

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
    seeds: list[Seed] | SeedRange = Field(default_factory=lambda: SeedRange(start=0, stop=100),
                                          description="a list of seeds or {start, stop} (default 0..99)")  # fmt: skip
    negative_prompt: Annotated[str, Field(max_length=2000)] | None = None
    settings: SettingsIn = Field(default_factory=SettingsIn)

    def seed_list(self) -> list[int]:
        s = self.seeds
        return list(range(s.start, s.stop)) if isinstance(s, SeedRange) else list(s)

    def seed_count(self) -> int:
        s = self.seeds
        return s.stop - s.start if isinstance(s, SeedRange) else len(s)


class ScoreOut(BaseModel):
    seeds: list[int]  # in the order asked
    scores: list[float | None]  # s(ε) per seed; null for a non-finite score


class SelectOut(BaseModel):
    best_seed: int
    best_score: float | None
    worst_seed: int
    worst_score: float | None
    seeds: list[int]  # sorted most → least stable (as `Engine.select`)
    scores: list[float | None]
    source: str  # "computed" | "bank" | "bank-any-prompt"


class OptimizeIn(Strict):
    prompt: Prompt
    seed: Seed
    iterations: Annotated[int, Field(ge=1)] = 20
    lr: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] | None = None
    momentum: Annotated[float, Field(ge=0, le=0.999)] = 0.5
    target: Annotated[float, Field(ge=-1, le=1)] | None = None
    renorm: bool | None = None
    negative_prompt: Annotated[str, Field(max_length=2000)] | None = None
    settings: SettingsIn = Field(default_factory=SettingsIn)


class OptimizeOut(BaseModel):
    seed: int
    initial_stability: float | None
    final_stability: float | None
    best_stability: float | None
    curve: list[float | None]  # s(ε_k), k = 0 … steps_run
    steps_run: int
    stop_reason: str
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
    seed: int | None
    width: int
    height: int
    image: str  # base64 PNG
    format: str = "png"


class ErrorOut(BaseModel):
    detail: str | list


__all__ = ["ErrorOut", "GenerateIn", "GenerateOut", "OptimizeIn", "OptimizeOut", "ScoreIn", "ScoreOut", "SeedRange",
           "SelectOut", "SettingsIn"]  # fmt: skip
