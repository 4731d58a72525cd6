"""What the Engine's generate and optimize return (Algorithm 1's `Selection` lives in `noisefast.selection`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from noisefast.atomic import atomic_write_bytes
from noisefast.errors import Interrupted
from noisefast.optimize import OptimizeResult


@dataclass(frozen=True, eq=False)
class Generation:
    """Images and the final latents x₀ they were decoded from, one per noise."""

    images: list  # list[PIL.Image.Image]
    latents: torch.Tensor  # [B, C, h, w] final latents x₀ (before decoding) = pipe(..., output_type="latent").images
    noise: torch.Tensor  # [B, C, h, w] initial noise ε = what pipe(..., latents=...) takes
    seeds: tuple[int, ...] | None


@dataclass(frozen=True, eq=False)
class Optimization:
    """Algorithm 2's outcome for each noise (see `noisefast.optimize.OptimizeResult`), with where it started."""

    result: OptimizeResult
    initial_noise: torch.Tensor  # [B, C, h, w] ε_0, float32
    seeds: tuple[int, ...] | None

    @property
    def best_noise(self) -> torch.Tensor:  # [B, C, h, w] per sample the most stable ε seen
        return self.result.best_noise

    @property
    def best_latents(self) -> torch.Tensor:  # [B, C, h, w] best_noise: pass to pipe(prompt, latents=...) as is
        return self.result.best_noise

    @property
    def noise(self) -> torch.Tensor:  # [B, C, h, w] the final ε
        return self.result.noise

    @property
    def history(self) -> torch.Tensor:  # [R, B] s(ε_k), k = 0 … R−1
        return self.result.history

    @property
    def steps_run(self) -> int:
        return self.result.steps_run

    @property
    def interrupted(self) -> bool:
        return self.result.interrupted

    def noise_tensors(self) -> dict[str, torch.Tensor]:
        """``initial``, ``best`` and ``final`` noise [B, C, h, w], float32, contiguous, on the CPU."""
        tensors = {"initial": self.initial_noise, "best": self.result.best_noise, "final": self.result.noise}
        return {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}

    def noise_bytes(self) -> bytes:
        """`noise_tensors` as a safetensors file's bytes (seeds in the metadata)."""
        from safetensors.torch import save

        return save(self.noise_tensors(), metadata={"seeds": ",".join(map(str, self.seeds or ()))})

    def save_noise(self, path) -> None:
        """`noise_tensors` as safetensors at ``path``, written atomically (seeds in the metadata), with the mode the
        umask gives (safetensors' own ``save_file`` recreates the file 0600)."""
        atomic_write_bytes(path, self.noise_bytes())


class OptimizationInterrupted(Interrupted):
    """Ctrl-C during `Engine.optimize`: ``.result`` is the `Optimization` so far (its best noise is kept)."""

    def __init__(self, result: Optimization):
        super().__init__(f"optimization interrupted after {result.steps_run} steps", result)


__all__ = ["Generation", "Optimization", "OptimizationInterrupted"]
