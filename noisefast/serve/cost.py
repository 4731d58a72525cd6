"""What one request costs the model, counted before it is queued: rows × UNet calls × latent pixels.

    calls per row   = denoising moves × (2 when CFG runs both halves: guidance_scale > 1)
                    + inversion moves × (2 when the inversion mixes both halves: inversion_guidance_scale ∉ {0, 1})
    score / select  = seeds × calls per row × latent pixels
    optimize        = (3 · iterations + 2) × calls per row × latent pixels
                      (an iteration is a forward and a backward chain, the backward ≈ 2 forwards; then s(ε₀) and
                      s(best ε) are measured afresh)
    generate        = denoising moves × (2 with CFG) × latent pixels

Latent pixels: h × w of the latent (the image's height/f × width/f; f = 8 for SDXL, 1 for pixel models). A request
over ``--max-cost`` is refused up front (422, type ``cost_limit``) with its count and what to lower. The unit is
what the UNet's work grows with for models that are compute-bound (SDXL); for a tiny model (builtin:digits) a
call's fixed overhead dominates small batches, so one unit takes longer there — the request timeout bounds that.

Default ``--max-cost``: 600,000 — builtin:digits at its defaults (8×8, 10 + 10 steps, CFG 2) scores 100 seeds for
192,000 and optimizes one seed 100 iterations for 579,840; a 32×32 request of 64 seeds (1,966,080) is refused
(``bench/serve_cost.py``: 25 µs a unit for batched scoring on a shared 2-core CPU, so that request took 50 s;
one-row calls of this tiny model cost 130–180 µs a unit). SDXL's default (1024², 50 + 50 steps, CFG) is
2,457,600 per seed: raise the limit for it (SDXL-Turbo at 512², 1 + 1 steps: 8,192 per seed).
"""

from __future__ import annotations

import math

from noisefast.defaults import DEFAULT_MAX_COST
from noisefast.denoisers.guidance import DENOISE_RULE, INVERSION_RULE, Guidance
from noisefast.errors import InputError
OPTIMIZE_CHAINS_PER_ITERATION = 3  # forward + backward (≈ 2 forwards)
OPTIMIZE_RESCORES = 2  # s(ε₀) and s(best ε), measured afresh


class CostLimit(InputError):
    """A request whose cost is over ``--max-cost`` (answered 422, type ``cost_limit``)."""

    http_status = 422
    loc = ("body",)
    kind = "cost_limit"


def _halves(scale: float, rule: str) -> int:
    return 2 if Guidance.of(scale, rule, "guidance").mode == "guided" else 1


def unet_calls(s, *, invert: bool = True) -> int:
    """UNet row-evaluations per row under settings ``s``; ``invert=False``: the denoising half only (generate)."""
    calls = s.steps * _halves(s.guidance_scale, DENOISE_RULE)
    if invert:
        calls += s.inversion_steps * _halves(s.inversion_guidance_scale, INVERSION_RULE)
    return calls


def check_cost(limit: int, *, rows: int, calls: int, latent: tuple[int, ...], what: str, lower: str) -> int:
    """``rows × calls × latent pixels`` (the latent's spatial dims), refused over ``limit``; the cost otherwise."""
    pixels = math.prod(latent[-2:])
    cost = rows * calls * pixels
    if cost > limit:
        raise CostLimit(f"this request costs {cost:,} ({what}: {rows:,} rows × {calls:,} UNet calls × {pixels:,} "
                        f"latent pixels), over this server's --max-cost of {limit:,}; ask for {lower}")  # fmt: skip
    return cost


def score_cost(limit: int, seeds: int, s, latent) -> int:
    return check_cost(limit, rows=seeds, calls=unet_calls(s), latent=latent, what="seeds",
                      lower="fewer seeds, fewer steps or a smaller image")  # fmt: skip


def optimize_cost(limit: int, iterations: int, s, latent) -> int:
    chains = OPTIMIZE_CHAINS_PER_ITERATION * iterations + OPTIMIZE_RESCORES
    return check_cost(limit, rows=chains, calls=unet_calls(s), latent=latent,
                      what=f"{iterations} iterations = {chains} chain passes",
                      lower="fewer iterations, fewer steps or a smaller image")  # fmt: skip


def generate_cost(limit: int, s, latent) -> int:
    return check_cost(limit, rows=1, calls=unet_calls(s, invert=False), latent=latent, what="one image",
                      lower="fewer steps or a smaller image")  # fmt: skip


__all__ = ["CostLimit", "DEFAULT_MAX_COST", "check_cost", "generate_cost", "optimize_cost", "score_cost", "unet_calls"]
