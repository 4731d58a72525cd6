"""DDIM timesteps and per-move alpha pairs, stepping exactly as diffusers' DDIM schedulers do.

`DDIMSchedule.from_config(config, num_steps)` reads any diffusers scheduler config (a dict, a
``FrozenDict``, a scheduler object of any class, or a ``scheduler_config.json`` / its folder) the way
``DDIMScheduler.from_config(config)`` and ``DDIMInverseScheduler.from_config(config)`` would: keys the DDIM
schedulers do not know are ignored, missing keys take the DDIM defaults. Mind what that means for SDXL's
``EulerDiscreteScheduler`` config: it has no ``clip_sample`` key, so — as in diffusers — x̂₀ is clipped to
[−1, 1] (pass ``clip_sample=False`` to turn it off).

Every step is a `Move`: the timestep the model is evaluated at and the cumulative alphas the latent moves
between. With ``T = num_train_timesteps``, ``n`` the number of steps and ``ᾱ`` the cumulative alphas
(computed in float32 like diffusers, stored as float64 holding those float32 values):

1. denoising (``DDIMScheduler.step(m, t, x)``), for each ``t`` of ``DDIMScheduler.timesteps``:
       t_prev = t − T // n;   ᾱ_from = ᾱ[t];   ᾱ_to = ᾱ[t_prev] if t_prev ≥ 0 else final_alpha_cumprod
   (``final_alpha_cumprod = 1`` when ``set_alpha_to_one`` else ᾱ[0]; note diffusers uses ``T // n``
   for every spacing, also "linspace" and "trailing" whose grids are not multiples of it — replicated.)
2. inversion (``DDIMInverseScheduler.step(m, t, x)``), for each ``t`` of its ascending timesteps:
       t_src = min(t − T // n', T − 1);   ᾱ_from = ᾱ[t_src] if t_src ≥ 0 else initial_alpha_cumprod;
       ᾱ_to = ᾱ[t]   (the model is evaluated at the *target* timestep t, as diffusers' inversion loops do)
   (``initial_alpha_cumprod = 1`` when ``set_alpha_to_one`` else ᾱ[0].)
   ``DDIMInverseScheduler`` refuses "linspace" spacing; here it inverts the reversed linspace grid with the
   same rule — an extension with no diffusers counterpart to compare against.

Zero terminal SNR (``rescale_betas_zero_snr=True``, Lin et al. 2023) makes ᾱ_{T−1} = 0: with "trailing"
spacing denoising starts and inversion ends there. Every such move is stepped as diffusers does, except
the one diffusers cannot: epsilon prediction from ᾱ = 0 (x̂₀ = (x − ε)/0 → inf/NaN),
which ``from_config`` refuses (see `_check_zero_alpha`); ``num_steps=0`` builds an inversion-only schedule.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

# DDIMScheduler.__init__ defaults (diffusers 0.42); DDIMInverseScheduler shares them except "thresholding".
DDIM_DEFAULTS = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    trained_betas=None,
    clip_sample=True,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="epsilon",
    thresholding=False,
    clip_sample_range=1.0,
    timestep_spacing="leading",
    rescale_betas_zero_snr=False,
)
SPACINGS = ("leading", "trailing", "linspace")
MAX_TRAIN_TIMESTEPS = 100_000  # every diffusers model trains on 1000; beyond this a schedule is a mistake (and memory)
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class Move:
    """One DDIM move: evaluate the model at timestep ``t``, move the latent from ᾱ_from to ᾱ_to."""

    t: int
    alpha_from: float
    alpha_to: float

    @property
    def coefficients(self) -> tuple[float, float]:
        """The coefficient pair `noisefast.ops.ddim_move` takes: (ᾱ_from, ᾱ_to)."""
        return (self.alpha_from, self.alpha_to)


class ScheduleMoves:
    """What every schedule (`DDIMSchedule`, `noisefast.flow_schedule.FlowSchedule`) says about its moves: the
    subclass holds ``denoise_moves`` and ``invert_moves``, each move with its timestep ``t``."""

    @property
    def num_steps(self) -> int:
        return len(self.denoise_moves)

    @property
    def num_inversion_steps(self) -> int:
        return len(self.invert_moves)

    @property
    def denoise_timesteps(self) -> tuple:
        """The scheduler's ``timesteps`` after ``set_timesteps(num_steps)`` (descending)."""
        return tuple(m.t for m in self.denoise_moves)

    @property
    def invert_timesteps(self) -> tuple:
        """Where the inversion evaluates the model, move by move (ascending)."""
        return tuple(m.t for m in self.invert_moves)


@dataclass(frozen=True, eq=False)
class DDIMSchedule(ScheduleMoves):
    """The denoising and inversion moves of a DDIM schedule (η = 0); ``invert_timesteps`` are
    ``DDIMInverseScheduler.timesteps`` after ``set_timesteps(num_inversion_steps)``."""

    alphas_cumprod: torch.Tensor  # [T] float64 (holding diffusers' float32 values): t → ᾱ_t
    denoise_moves: tuple[Move, ...]
    invert_moves: tuple[Move, ...]
    prediction_type: str  # "epsilon" or "v_prediction"
    clip_sample_range: float | None  # None when clip_sample is off
    config: Mapping  # the resolved DDIM config (defaults filled in, overrides applied)

    @classmethod
    def from_config(cls, config, num_steps: int, num_inversion_steps: int | None = None, **overrides) -> "DDIMSchedule":
        """Moves of ``DDIMScheduler``/``DDIMInverseScheduler.from_config(config)`` with ``set_timesteps``.

        ``num_inversion_steps`` defaults to ``num_steps``; ``overrides`` replace config keys (e.g.
        ``timestep_spacing="trailing"``, ``clip_sample=False``). ``num_steps=0`` (with ``num_inversion_steps``)
        builds an inversion-only schedule: `invert` runs, `denoise`/`stability_score` refuse it. That is the
        way to invert with an epsilon-prediction zero-terminal-SNR config, whose first denoising step (from
        ᾱ = 0) is undefined and refused.
        """
        cfg = resolve_config(config, overrides)
        inversion_only = isinstance(num_steps, (int, np.integer)) and not isinstance(num_steps, bool) and num_steps == 0
        if inversion_only and num_inversion_steps is None:
            raise ValueError(f"num_steps must be in [1, num_train_timesteps={cfg['num_train_timesteps']}], got 0 "
                             f"(0 only with num_inversion_steps, for an inversion-only schedule)")
        n = 0 if inversion_only else _check_steps(num_steps, "num_steps", cfg)
        n_inv = n if num_inversion_steps is None else _check_steps(num_inversion_steps, "num_inversion_steps", cfg)
        ac32 = alphas_cumprod(cfg)  # [T] float32, bit-identical to diffusers
        ac = ac32.tolist()
        edge = 1.0 if cfg["set_alpha_to_one"] else ac[0]  # final (denoise) = initial (inverse) alpha
        T = cfg["num_train_timesteps"]

        # 1. denoising moves, as DDIMScheduler.step
        denoise = []
        for t in _timesteps(cfg, n, ascending=False) if n else ():
            t_prev = t - T // n
            denoise.append(Move(t, ac[t], ac[t_prev] if t_prev >= 0 else edge))
        # 2. inversion moves, as DDIMInverseScheduler.step
        invert = []
        for t in _timesteps(cfg, n_inv, ascending=True):
            t_src = min(t - T // n_inv, T - 1)
            invert.append(Move(t, ac[t_src] if t_src >= 0 else edge, ac[t]))
        _check_zero_alpha(cfg, denoise, invert)
        return cls(
            alphas_cumprod=ac32.to(torch.float64),
            denoise_moves=tuple(denoise),
            invert_moves=tuple(invert),
            prediction_type=cfg["prediction_type"],
            clip_sample_range=float(cfg["clip_sample_range"]) if cfg["clip_sample"] else None,
            config=cfg,
        )

    def __repr__(self) -> str:
        return (
            f"DDIMSchedule(num_steps={self.num_steps}, num_inversion_steps={self.num_inversion_steps}, "
            f"spacing={self.config['timestep_spacing']!r}, prediction_type={self.prediction_type!r}, "
            f"clip_sample_range={self.clip_sample_range}, denoise_timesteps={list(self.denoise_timesteps)})"
        )


def _check_zero_alpha(cfg: Mapping, denoise: list[Move], invert: list[Move]) -> None:
    """Refuse the ᾱ = 0 moves that are not defined: epsilon prediction from ᾱ_from = 0.

    Zero terminal SNR (``rescale_betas_zero_snr=True``) makes ᾱ_{T−1} = 0; "trailing" (and "linspace")
    spacing starts denoising there. v prediction steps from it (x̂₀ = √ᾱ·x − √(1−ᾱ)·v = −v, ε̂ = x) and
    every inversion ends on it (x' = √ᾱ'·x̂₀ + √(1−ᾱ')·ε̂ = ε̂): diffusers gives finite numbers for these.
    Epsilon prediction from ᾱ = 0 computes x̂₀ = (x − √(1−ᾱ)·ε)/√ᾱ = (x − ε)/0: diffusers' DDIMScheduler
    returns ±inf and then NaN; with ``clip_sample`` the clamp turns ±inf into ±r — x̂₀ is then the sign of
    the model's error x − ε, and NaN for an exact model (whose ε at ᾱ = 0 is x itself). Refused here.
    """
    if cfg["prediction_type"] != "epsilon":
        return
    for kind, moves in (("denoising", denoise), ("inversion", invert)):
        bad = [m.t for m in moves if m.alpha_from == 0.0]
        if bad:
            last = cfg["num_train_timesteps"] - 1
            why = f" (rescale_betas_zero_snr=True makes ᾱ_{last} = 0)" if cfg["rescale_betas_zero_snr"] else ""
            raise ValueError(
                f"prediction_type='epsilon' cannot take the {kind} step at t={bad[0]} from ᾱ = 0{why}: "
                f"x̂₀ = (x − √(1−ᾱ)·ε)/√ᾱ divides by zero (diffusers returns inf/NaN, or with clip_sample "
                f"±clip_sample_range by the sign of the model's error); use prediction_type='v_prediction' (as "
                f"zero-SNR models are trained), or num_steps=0 with num_inversion_steps for an inversion-only schedule"
            )


def resolve_config(config, overrides: Mapping | None = None) -> dict:
    """The DDIM config a DDIM scheduler would be built with: known keys only, defaults filled in."""
    raw = _as_mapping(config)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(DDIM_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown DDIM scheduler setting(s) {unknown}; known: {sorted(DDIM_DEFAULTS)}")
    cfg = {k: raw.get(k, v) for k, v in DDIM_DEFAULTS.items()}
    cfg.update(overrides)
    if cfg["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {cfg['prediction_type']!r}")
    if cfg["timestep_spacing"] not in SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {cfg['timestep_spacing']!r}")
    if cfg["thresholding"]:
        raise ValueError("dynamic thresholding (thresholding=True) is not supported; it is unsuitable for latent models")
    if cfg["clip_sample"] and not (cfg["clip_sample_range"] > 0 and math.isfinite(cfg["clip_sample_range"])):
        raise ValueError(f"clip_sample_range must be a positive finite number, got {cfg['clip_sample_range']!r}")
    T = cfg["num_train_timesteps"]
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(f"num_train_timesteps must be an int in [1, {MAX_TRAIN_TIMESTEPS}], got {T!r}")
    for key in ("beta_start", "beta_end"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"{key} must be a number in [0, 1] (a β_t, with ᾱ_t = ∏(1 − β_s)), got {v!r}")
    betas = cfg["trained_betas"]
    if betas is not None and (not isinstance(betas, (list, tuple, np.ndarray, torch.Tensor)) or len(betas) != T):
        got = f"{len(betas)} entries" if hasattr(betas, "__len__") else type(betas).__name__
        raise ValueError(f"trained_betas must be a list of num_train_timesteps={T} numbers, got {got}")
    return cfg


def alphas_cumprod(cfg: Mapping) -> torch.Tensor:  # [T] float32
    """ᾱ_t = ∏_{s≤t} (1 − β_s), computed with diffusers' float32 ops so the values are bit-identical."""
    T = cfg["num_train_timesteps"]
    if cfg["trained_betas"] is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float32)
        if betas.shape != (T,):
            raise ValueError(f"trained_betas must have num_train_timesteps={T} entries, got shape {tuple(betas.shape)}")
    elif cfg["beta_schedule"] == "linear":
        betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], T, dtype=torch.float32)
    elif cfg["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, T, dtype=torch.float32) ** 2
    elif cfg["beta_schedule"] == "squaredcos_cap_v2":
        betas = _cosine_betas(T)
    else:
        raise ValueError(
            f"beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2', got {cfg['beta_schedule']!r}"
        )
    bad = ~(torch.isfinite(betas) & (betas >= 0) & (betas <= 1))
    if bool(bad.any()):  # ᾱ > 1 (β < 0) or a NaN would reach the kernels as √(1 − ᾱ) = NaN
        t = int(bad.nonzero()[0])
        raise ValueError(f"betas must be in [0, 1] (ᾱ_t = ∏(1 − β_s) must stay in [0, 1]); β_{t} = {float(betas[t])!r}")
    if cfg["rescale_betas_zero_snr"]:
        betas = _rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0)


def _cosine_betas(T: int, max_beta: float = 0.999) -> torch.Tensor:  # [T] float32
    """diffusers ``betas_for_alpha_bar`` (cosine): β_i = min(1 − ᾱ(t_{i+1})/ᾱ(t_i), max_beta)."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)], dtype=torch.float32)


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:  # [T] float32
    """Lin et al. 2023, Algorithm 1 (diffusers ``rescale_zero_terminal_snr``): shift/scale √ᾱ so √ᾱ_T = 0."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    s0, sT = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - sT) * (s0 / (s0 - sT))
    ab = sqrt_ab**2
    alphas = torch.cat([ab[0:1], ab[1:] / ab[:-1]])
    return 1 - alphas


def _timesteps(cfg: Mapping, n: int, *, ascending: bool) -> list[int]:
    """``set_timesteps(n)`` of DDIMScheduler (descending) or DDIMInverseScheduler (ascending)."""
    T, spacing = cfg["num_train_timesteps"], cfg["timestep_spacing"]
    if spacing == "leading":
        ts = np.arange(0, n) * (T // n) + cfg["steps_offset"]  # ascending
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)[::-1]).astype(np.int64) - 1  # ascending
    else:  # linspace (no steps_offset, as diffusers)
        ts = np.linspace(0, T - 1, n).round().astype(np.int64)
    ts = [int(v) for v in ts]
    if len(ts) != n or min(ts) < 0 or max(ts) > T - 1:
        # e.g. "trailing" with n = 61: float round-off in np.arange yields 62 timesteps ending at −1, which
        # diffusers silently steps with ᾱ[−1]; "leading" with a steps_offset can run past T − 1.
        raise ValueError(
            f"{n} steps with timestep_spacing={spacing!r}, steps_offset={cfg['steps_offset']} give {len(ts)} "
            f"timesteps {ts[:2]}...{ts[-2:]}, not {n} within [0, {T - 1}] (diffusers mis-steps here); "
            f"choose another number of steps"
        )
    return ts if ascending else ts[::-1]


def _check_steps(n, name: str, cfg: Mapping) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if not 1 <= n <= cfg["num_train_timesteps"]:
        raise ValueError(f"{name} must be in [1, num_train_timesteps={cfg['num_train_timesteps']}], got {n}")
    return int(n)


def _as_mapping(config) -> Mapping:
    """dict / FrozenDict / scheduler object / path to ``scheduler_config.json`` or its folder → mapping."""
    if isinstance(config, Mapping):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "scheduler_config.json")
        if not os.path.isfile(path):
            raise ValueError(f"no scheduler config at {path!r}")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"scheduler config {path!r} is not valid JSON ({e})") from None
        except OSError as e:
            raise ValueError(f"cannot read the scheduler config {path!r}: {e.strerror or e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"scheduler config {path!r} must hold a JSON object, got {type(data).__name__}")
        return data
    cfg = getattr(config, "config", None)
    if isinstance(cfg, Mapping):
        return cfg
    raise TypeError(
        f"config must be a mapping, a diffusers scheduler or a path to scheduler_config.json, got {type(config).__name__}"
    )
