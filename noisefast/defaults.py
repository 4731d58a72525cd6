"""Every default setting, in one place: per model family, and the values the low-level functions use.

The low-level functions (`noisefast.transform`, `noisefast.stability`, `noisefast.optimize`) default to
the SDXL family's values, so ``stability_score(den, sched, noise, cond)`` and
``Engine.from_pretrained(sdxl).score(...)`` mean the same thing. A built-in model's defaults come from
its card (``noisefast_model.json``), read by `noisefast.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Algorithm 2 (the paper's defaults): 100 steps of gradient descent with momentum, lr 100, momentum 0.5.
DEFAULT_ITERATIONS = 100
DEFAULT_LR = 100.0
DEFAULT_MOMENTUM = 0.5

# Algorithm 1: K candidates; how many rows go through the UNet at once when nothing else is said.
DEFAULT_NUM_CANDIDATES = 100
DEFAULT_BATCH_SIZE = 8
# Pixel models (builtin:digits, 8×8) are tiny: at 8 rows a UNet call is mostly per-call overhead. Measured on
# the 2-core CPU, 100 seeds at 10+10 steps: 11.0 s at 8 rows, 5.6 s at 32, 4.2 s at 100 (2026-12-04).
PIXEL_BATCH_SIZE = 64

# The server: what one request may cost (rows × UNet calls × latent pixels; noisefast.serve.cost explains the count).
# 600,000 ≈ the default optimize call on builtin:digits (579,840); SDXL needs it raised (2,457,600 per 1024² seed);
# bench/serve_cost.py measures seconds per unit.
DEFAULT_MAX_COST = 600_000

# The screening job: rows per shard — what a kill can lose, and the unit Ray hands out.
DEFAULT_SHARD_SIZE = 1024


@dataclass(frozen=True)
class ModelDefaults:
    """Per-model generation settings; every field can be overridden per call."""

    family: str  # "sdxl", "sdxl-turbo", "pixel", "sd3", "sd3-turbo", "flux-dev" or "flux-schnell"
    height: int
    width: int
    steps: int  # DDIM denoising steps N
    inversion_steps: int  # DDIM inversion steps N'
    guidance_scale: float  # w_d (> 1 runs classifier-free guidance)
    inversion_guidance_scale: float  # w_i
    optimize_lr: float = DEFAULT_LR  # Algorithm 2's learning rate (the paper's 100, for SDXL latents)
    optimize_renorm: bool = False  # project ε back to ‖ε‖ = √D after each step
    max_side: int = 2048  # the largest height/width accepted (pixels): beyond it the model is out of its range
    batch_size: int = DEFAULT_BATCH_SIZE  # rows per UNet batch at the default size (larger sizes: DEFAULT_BATCH_SIZE)


# SDXL: 50 DDIM steps at 1024², CFG 5.5 (the paper's SDXL setting), conditional-only inversion.
# SDXL-Turbo: its model card's 512², one step, no guidance; one inversion step.
SDXL_DEFAULTS = ModelDefaults("sdxl", 1024, 1024, 50, 50, 5.5, 1.0)
TURBO_DEFAULTS = ModelDefaults("sdxl-turbo", 512, 512, 1, 1, 0.0, 1.0)
FAMILY_DEFAULTS = {d.family: d for d in (SDXL_DEFAULTS, TURBO_DEFAULTS)}

# Flow-matching transformers (Euler sampler; `noisefast.flow_schedule`), their model cards' settings at 1024²:
# SD3 / SD3.5: 28 steps, CFG 7; SD3.5-Large-Turbo: 4 steps, no CFG; FLUX.1-dev: 28 steps, *embedded* guidance 3.5
# (a model input, no CFG); FLUX.1-schnell: 4 steps, no guidance. Inversion: as many steps, conditional (w_i = 1).
SD3_DEFAULTS = ModelDefaults("sd3", 1024, 1024, 28, 28, 7.0, 1.0)
SD3_TURBO_DEFAULTS = ModelDefaults("sd3-turbo", 1024, 1024, 4, 4, 0.0, 1.0)
FLUX_DEV_DEFAULTS = ModelDefaults("flux-dev", 1024, 1024, 28, 28, 3.5, 1.0)
FLUX_SCHNELL_DEFAULTS = ModelDefaults("flux-schnell", 1024, 1024, 4, 4, 0.0, 1.0)
FLOW_FAMILY_DEFAULTS = {  # per model kind: the families its pipelines can be run with
    "sd3": {d.family: d for d in (SD3_DEFAULTS, SD3_TURBO_DEFAULTS)},
    "flux": {d.family: d for d in (FLUX_DEV_DEFAULTS, FLUX_SCHNELL_DEFAULTS)},
}
FAMILIES = (*FAMILY_DEFAULTS, *(f for fams in FLOW_FAMILY_DEFAULTS.values() for f in fams))  # what --family takes

# The low-level functions' defaults: the SDXL family's.
DEFAULT_GUIDANCE_SCALE = SDXL_DEFAULTS.guidance_scale
DEFAULT_INVERSION_GUIDANCE_SCALE = SDXL_DEFAULTS.inversion_guidance_scale

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_GUIDANCE_SCALE",
    "DEFAULT_INVERSION_GUIDANCE_SCALE",
    "DEFAULT_ITERATIONS",
    "DEFAULT_LR",
    "DEFAULT_MAX_COST",
    "DEFAULT_MOMENTUM",
    "DEFAULT_NUM_CANDIDATES",
    "DEFAULT_SHARD_SIZE",
    "FAMILIES",
    "FAMILY_DEFAULTS",
    "FLOW_FAMILY_DEFAULTS",
    "FLUX_DEV_DEFAULTS",
    "FLUX_SCHNELL_DEFAULTS",
    "ModelDefaults",
    "PIXEL_BATCH_SIZE",
    "SD3_DEFAULTS",
    "SD3_TURBO_DEFAULTS",
    "SDXL_DEFAULTS",
    "TURBO_DEFAULTS",
]
