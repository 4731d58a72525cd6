"""The names of the ways ``noisefast bench scoring`` times (no torch: the CLI validates with them, `compare` and the
legacy reader match on them)."""

from __future__ import annotations

USERS = ("per-seed", "batched", "compiled")  # the diffusers users, from the most naive to the strongest
THROUGH = ("pipeline", "unet")  # through the stock pipeline, or the loops around the UNet alone


def way_name(through: str, user: str) -> str:
    """``"diffusers pipeline batched + compile"`` etc.: a baseline's measurement name."""
    kind = {"pipeline": "pipeline", "unet": "UNet loop"}[through]
    return f"diffusers {kind} " + {"per-seed": "per seed", "batched": "batched", "compiled": "batched + compile"}[user]


def variant_name(variant: str) -> str:
    """``"noisefast [auto]"``: the measurement name of a noisefast variant."""
    return f"noisefast [{variant}]"
