"""Flow-matching (rectified-flow) noise levels and Euler moves, exactly as diffusers' ``FlowMatchEulerDiscreteScheduler``.

SD3 / SD3.5 and FLUX.1 are trained on the straight path between data and noise,

    x_σ = (1 − σ)·x₀ + σ·ε,       the model predicts the velocity  v(x_σ, σ) ≈ ε − x₀,

and sample with Euler steps on the ODE dx/dσ = v. One move from σ to σ' is

    x' = x + (σ' − σ)·v(x, σ)                                   (``FlowMatchEulerDiscreteScheduler.step``)

— affine in (x, v) like the DDIM move, so `noisefast.ops.ddim_move(..., prediction_type="flow")` runs it (with
the classifier-free-guidance mix v = v_u + w·(v_c − v_u) fused in).

`FlowSchedule.from_config(config, num_steps, num_inversion_steps, mu=, sigmas=)` builds both directions:

1. **D (denoising)**: σ_0 > σ_1 > … > σ_{n−1} from ``set_timesteps`` (below), then the terminal σ_n = 0 (1 with
   ``invert_sigmas``); move k evaluates the model at t_k = σ_k·T and goes σ_k → σ_{k+1}.
2. **I (inversion)**: the n' moves of the same schedule computed for n' steps, in reverse order — σ ascending,
   the velocity evaluated at the *current* point: move k goes σ_{k+1} → σ_k at t = σ_{k+1}·T (so the first
   inversion step evaluates the model at σ = 0, t = 0). This is the standard Euler inversion of rectified
   flows (as RF-Inversion / FlowEdit-style editing invert), the exact reverse of D up to the velocity being
   read at the other end of each step.

``set_timesteps(n, sigmas=, mu=)`` of diffusers 0.42, step by step (T = ``num_train_timesteps``; every
operation below runs in the dtype diffusers uses, so the σ are bit-identical — float64 numpy for the default
grid, float32 numpy for a custom one, float32 torch for the terminal steps):

    init:   σ_max, σ_min = shifted(1), shifted(1/T)   (float32; "shifted" only without dynamic shifting)
    a. σ = linspace(σ_max·T, σ_min·T, n)/T             or  σ = given sigmas (float32)  — FLUX: linspace(1, 1/n, n)
    b. dynamic:  σ = e^μ/(e^μ + (1/σ − 1))   ("exponential")  or  μ/(μ + (1/σ − 1))  ("linear")
       static:   σ = s·σ/(1 + (s − 1)·σ)                         (``shift`` s; note the init grid is shifted too)
    c. shift_terminal z:  σ = 1 − (1 − σ)/((1 − σ_{n−1})/(1 − z))
    d. optional Karras / exponential re-spacing between σ_{n−1} and σ_0
    e. float32; t = σ·T;  invert_sigmas: σ = 1 − σ, t = σ·T, append 1; else append 0

μ (dynamic shifting) is the pipelines' resolution-dependent shift, `calculate_shift`: linear in the image's
token count between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift). Beta-distributed
sigmas (``use_beta_sigmas``, needs scipy) and ``stochastic_sampling`` (not a deterministic map) are refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from noisefast.schedule import MAX_TRAIN_TIMESTEPS, DDIMSchedule, ScheduleMoves, _as_mapping

# FlowMatchEulerDiscreteScheduler.__init__ defaults (diffusers 0.42).
FLOW_DEFAULTS = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=False,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
    invert_sigmas=False,
    shift_terminal=None,
    use_karras_sigmas=False,
    use_exponential_sigmas=False,
    use_beta_sigmas=False,
    time_shift_type="exponential",
    stochastic_sampling=False,
)
SIGMA_GRIDS = ("scheduler", "linspace")  # set_timesteps(n) (SD3 pipeline) / sigmas=linspace(1, 1/n, n) (FLUX pipelines)
MAX_FLOW_STEPS = 1000


@dataclass(frozen=True)
class FlowMove:
    """One Euler move: evaluate the velocity at timestep ``t`` (= σ_from·T), move the latent from σ_from to σ_to."""

    t: float
    sigma_from: float
    sigma_to: float

    @property
    def coefficients(self) -> tuple[float, float]:
        """The coefficient pair `noisefast.ops.ddim_move` takes for ``prediction_type="flow"``: (σ_from, σ_to)."""
        return (self.sigma_from, self.sigma_to)


@dataclass(frozen=True, eq=False)
class FlowSchedule(ScheduleMoves):
    """The denoising and inversion Euler moves of a flow-matching schedule; ``denoise_timesteps`` are
    ``FlowMatchEulerDiscreteScheduler.timesteps`` (σ_k·T), ``invert_timesteps`` σ·T where each inversion move starts."""

    denoise_moves: tuple[FlowMove, ...]
    invert_moves: tuple[FlowMove, ...]
    sigmas: tuple[float, ...]  # denoising σ_0 … σ_n (terminal included), float32 values: the scheduler's .sigmas
    mu: float | None  # the dynamic shift used (None without dynamic shifting)
    config: Mapping  # the resolved config (defaults filled in)
    prediction_type: str = "flow"  # what `noisefast.ops.ddim_move` is told: the Euler move
    clip_sample_range: None = None  # no x̂₀ clipping in flow matching

    @classmethod
    def from_config(cls, config, num_steps: int, num_inversion_steps: int | None = None, *, mu: float | None = None,
                    sigmas: str = "scheduler", **overrides) -> "FlowSchedule":
        """Moves of ``FlowMatchEulerDiscreteScheduler.from_config(config)`` after ``set_timesteps``.

        ``mu``: the dynamic shift (required when the config has ``use_dynamic_shifting``; see `calculate_shift`).
        ``sigmas``: ``"scheduler"`` — ``set_timesteps(n, mu=mu)`` (as ``StableDiffusion3Pipeline``), or
        ``"linspace"`` — ``set_timesteps(sigmas=np.linspace(1, 1/n, n), mu=mu)`` (as ``FluxPipeline``).
        ``num_inversion_steps`` defaults to ``num_steps``; ``overrides`` replace config keys.
        """
        cfg = resolve_flow_config(config, overrides)
        if sigmas not in SIGMA_GRIDS:
            raise ValueError(f"sigmas must be one of {SIGMA_GRIDS}, got {sigmas!r}")
        n = _check_steps(num_steps, "num_steps")
        n_inv = n if num_inversion_steps is None else _check_steps(num_inversion_steps, "num_inversion_steps")
        if cfg["use_dynamic_shifting"]:
            if mu is None:
                raise ValueError("this scheduler config uses dynamic shifting: mu is required (see calculate_shift)")
            if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
                raise ValueError(f"mu must be a finite number, got {mu!r}")
        den_sigmas, den_t = flow_sigmas(cfg, n, mu=mu, custom=sigmas == "linspace")
        inv_sigmas, inv_t = flow_sigmas(cfg, n_inv, mu=mu, custom=sigmas == "linspace")
        # 1. D: at t_k, σ_k → σ_{k+1}
        denoise = tuple(FlowMove(den_t[k], den_sigmas[k], den_sigmas[k + 1]) for k in range(n))
        # 2. I: reversed, the velocity read where each move starts: at t(σ_{k+1}), σ_{k+1} → σ_k
        invert = tuple(FlowMove(inv_t[k + 1], inv_sigmas[k + 1], inv_sigmas[k]) for k in reversed(range(n_inv)))
        return cls(denoise_moves=denoise, invert_moves=invert, sigmas=tuple(den_sigmas),
                   mu=float(mu) if cfg["use_dynamic_shifting"] else None, config=cfg)  # fmt: skip

    def __repr__(self) -> str:
        return (f"FlowSchedule(num_steps={self.num_steps}, num_inversion_steps={self.num_inversion_steps}, "
                f"shift={self.config['shift']}, mu={self.mu}, sigmas={[round(s, 4) for s in self.sigmas]})")  # fmt: skip


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """μ of the resolution-dependent shift (diffusers' pipelines' ``calculate_shift``): the line through
    (base_seq_len, base_shift) and (max_seq_len, max_shift), at ``image_seq_len`` image tokens."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def shift_for(cfg: Mapping, image_seq_len: int) -> float:
    """`calculate_shift` with the config's bounds, as the SD3 and FLUX pipelines call it."""
    return calculate_shift(image_seq_len, cfg["base_image_seq_len"], cfg["max_image_seq_len"], cfg["base_shift"],
                           cfg["max_shift"])  # fmt: skip


def flow_sigmas(cfg: Mapping, n: int, *, mu: float | None = None, custom: bool = False) -> tuple[list[float], list[float]]:
    """(σ_0 … σ_n with the terminal value, t_0 … t_n = σ·T): ``set_timesteps`` step by step (module docstring)."""
    T = cfg["num_train_timesteps"]
    shift = cfg["shift"]
    # init: the training grid's ends, float32 torch (shifted there too, without dynamic shifting)
    ends = torch.tensor([float(T), 1.0], dtype=torch.float32) / T
    if not cfg["use_dynamic_shifting"]:
        ends = shift * ends / (1 + (shift - 1) * ends)
    sigma_max, sigma_min = ends[0].item(), ends[1].item()
    # a. the grid
    if custom:
        sigmas = np.linspace(1.0, 1 / n, n).astype(np.float32)
    else:
        sigmas = np.linspace(sigma_max * T, sigma_min * T, n) / T
    # b. shift
    if cfg["use_dynamic_shifting"]:
        if cfg["time_shift_type"] == "exponential":
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
        else:
            sigmas = mu / (mu + (1 / sigmas - 1) ** 1.0)
    else:
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    # c. stretch to the terminal value
    if cfg["shift_terminal"]:
        one_minus_z = 1 - sigmas
        scale_factor = one_minus_z[-1] / (1 - cfg["shift_terminal"])
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 for one step: refused in e.
            sigmas = 1 - (one_minus_z / scale_factor)
    # d. re-spacing
    if cfg["use_karras_sigmas"]:
        sigmas = _karras(sigmas, n)
    elif cfg["use_exponential_sigmas"]:
        sigmas = np.exp(np.linspace(math.log(sigmas[0].item()), math.log(sigmas[-1].item()), n))
    # e. float32, timesteps, terminal value
    sig = torch.from_numpy(np.asarray(sigmas)).to(dtype=torch.float32)
    if not bool(torch.isfinite(sig).all()) or not bool(((sig >= 0) & (sig <= 1)).all()):
        # e.g. shift_terminal with one step: 1 − σ_0 = 0 stretches by 0/0 (diffusers gives NaN)
        raise ValueError(f"{n} step(s) with this scheduler config give noise levels {sig.tolist()[:4]} outside "
                         f"[0, 1] (diffusers mis-steps here); choose another number of steps")
    if cfg["invert_sigmas"]:
        sig = 1.0 - sig
    timesteps = sig * T
    end = torch.ones(1) if cfg["invert_sigmas"] else torch.zeros(1)
    sig = torch.cat([sig, end])
    t_end = (end * T).item()  # the inversion evaluates the velocity here first (σ = 0 → t = 0)
    return sig.tolist(), timesteps.tolist() + [t_end]


def _karras(in_sigmas: np.ndarray, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) spacing between the grid's ends (diffusers ``_convert_to_karras``)."""
    sigma_min, sigma_max = in_sigmas[-1].item(), in_sigmas[0].item()
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def resolve_flow_config(config, overrides: Mapping | None = None) -> dict:
    """The config a ``FlowMatchEulerDiscreteScheduler`` would be built with: known keys only, defaults filled in."""
    raw = _as_mapping(config)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(FLOW_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown flow scheduler setting(s) {unknown}; known: {sorted(FLOW_DEFAULTS)}")
    cfg = {k: raw.get(k, v) for k, v in FLOW_DEFAULTS.items()} | overrides
    if cfg["stochastic_sampling"]:
        raise ValueError("stochastic_sampling=True draws fresh noise at every step: D is then not a deterministic "
                         "map of the initial noise and cannot be inverted")
    if cfg["use_beta_sigmas"]:
        raise ValueError("use_beta_sigmas is not supported (scipy's beta quantiles); use the default, Karras or "
                         "exponential sigmas")
    if cfg["use_karras_sigmas"] and cfg["use_exponential_sigmas"]:
        raise ValueError("only one of use_karras_sigmas and use_exponential_sigmas can be set")
    if cfg["time_shift_type"] not in ("exponential", "linear"):
        raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {cfg['time_shift_type']!r}")
    if isinstance(cfg["num_train_timesteps"], bool) or not isinstance(cfg["num_train_timesteps"], int) \
            or not 1 <= cfg["num_train_timesteps"] <= MAX_TRAIN_TIMESTEPS:  # 10**10 would be a 80 GB sigma table
        raise ValueError(f"num_train_timesteps must be an int in [1, {MAX_TRAIN_TIMESTEPS}], got "
                         f"{cfg['num_train_timesteps']!r}")  # fmt: skip
    shift = cfg["shift"]
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a positive finite number, got {shift!r}")
    return cfg


def _check_steps(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if not 1 <= n <= MAX_FLOW_STEPS:
        raise ValueError(f"{name} must be in [1, {MAX_FLOW_STEPS}], got {n}")
    return int(n)




# --- both samplers ---------------------------------------------------------------------------------------
Schedule = DDIMSchedule | FlowSchedule  # what transform/stability/optimize step: DDIM or flow-matching Euler moves
SCHEDULE_TYPES = (DDIMSchedule, FlowSchedule)


def check_schedule(sched) -> None:
    """``sched`` must be a `DDIMSchedule` or a `FlowSchedule` (TypeError otherwise)."""
    if not isinstance(sched, SCHEDULE_TYPES):
        raise TypeError(f"sched must be a noisefast DDIMSchedule or FlowSchedule, got {type(sched).__name__}")


__all__ = ["FLOW_DEFAULTS", "SCHEDULE_TYPES", "FlowMove", "FlowSchedule", "Schedule", "calculate_shift",
           "check_schedule", "flow_sigmas", "resolve_flow_config", "shift_for"]
