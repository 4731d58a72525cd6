"""Pure-torch references of every fused kernel: the test oracle and the fallback.

Each function here has a fused twin in ``csrc/`` exposed through ``noisefast.ops``; the twins must
agree on random data, every dtype and odd sizes (``tests/test_ops_*.py``). These are written for
clarity, not speed, and compute in the input dtype unless noted, so that "torch doing the same math in
that dtype" is exactly what they do.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")  # "flow": the flow-matching Euler move (σ, not ᾱ)
COSINE_EPS = 1e-12  # denominators are clamped to this: a zero vector has cosine 0, never NaN


def _per_sample(value, x: torch.Tensor) -> torch.Tensor:
    """A float or a ``[B]`` tensor, broadcast against ``x`` ``[B, ...]``, in ``x``'s dtype."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape((-1,) + (1,) * (x.ndim - 1))


def ddim_move(
    x: torch.Tensor,  # [B, C, H, W] latent at cumulative alpha `alpha_from`
    model_out: torch.Tensor,  # [B, C, H, W] conditional model output m_c
    alpha_from,  # float or [B]: a = ᾱ_from
    alpha_to,  # float or [B]: a' = ᾱ_to
    *,
    model_out_uncond: torch.Tensor | None = None,  # [B, C, H, W] unconditional output m_u
    guidance_scale=1.0,  # float or [B]: w
    prediction_type: str = "epsilon",
    clip_sample_range: float | None = None,
) -> torch.Tensor:  # [B, C, H, W] latent at cumulative alpha `alpha_to`
    """One guided DDIM move (η = 0) from ᾱ_from to ᾱ_to; denoising and inversion alike.

    ᾱ = 0 (zero terminal SNR) gives diffusers' numbers: finite for v prediction and for moves to ᾱ_to = 0;
    epsilon prediction from ᾱ_from = 0 gives ±inf unless clipped (then x̂₀ = ±r, with zero gradient).

    1. guidance:       m  = m_u + w·(m_c − m_u)              (m = m_c without m_u)
    2. predictions:    epsilon:  x̂₀ = (x − √(1−a)·m)/√a,   ε̂ = m
                       v:        x̂₀ = √a·x − √(1−a)·m,      ε̂ = √a·m + √(1−a)·x
    3. clipping:       x̂₀ ← clamp(x̂₀, −r, r)                (optional, diffusers ``clip_sample``)
       (ε̂ is kept as predicted, as diffusers does with its default ``use_clipped_model_output=False``)
    4. move:           x' = √a'·x̂₀ + √(1−a')·ε̂

    ``prediction_type="flow"`` is the flow-matching Euler move (diffusers ``FlowMatchEulerDiscreteScheduler``):
    ``alpha_from``/``alpha_to`` are then the noise levels σ, σ' of x_σ = (1 − σ)·x₀ + σ·ε, ``model_out`` the
    velocity v ≈ ε − x₀ (guided as in step 1), and the move is x' = x + (σ' − σ)·v (no clipping).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    a = _per_sample(alpha_from, x)
    a_to = _per_sample(alpha_to, x)
    # 1. classifier-free guidance
    m = model_out
    if model_out_uncond is not None:
        w = _per_sample(guidance_scale, x)
        m = model_out_uncond + w * (model_out - model_out_uncond)
    if prediction_type == "flow":  # Euler: x' = x + (σ' − σ)·v
        if clip_sample_range is not None:
            raise ValueError("the flow move has no x̂₀ to clip: clip_sample_range must be None")
        return x + (a_to - a) * m
    # 2. predicted clean sample and noise
    if prediction_type == "epsilon":
        x0_hat = (x - (1 - a).sqrt() * m) / a.sqrt()  # a = 0: ±inf (NaN where x = m), as diffusers' (x − m)/0
        if clip_sample_range is not None:
            # a = 0 with clipping (zero terminal SNR): the clamp below makes x̂₀ = ±r, constant in (x, m). Its
            # gradient is 0; the detached value keeps autograd's 0/√0 = NaN out of it (same values elsewhere).
            zero = a == 0
            x0_hat = torch.where(zero, x0_hat.detach(), (x - (1 - a).sqrt() * m) / torch.where(zero, 1, a).sqrt())
        eps_hat = m
    else:
        x0_hat = a.sqrt() * x - (1 - a).sqrt() * m
        eps_hat = a.sqrt() * m + (1 - a).sqrt() * x
    # 3. optional clipping of x̂₀
    if clip_sample_range is not None:
        x0_hat = x0_hat.clamp(-clip_sample_range, clip_sample_range)
    # 4. deterministic DDIM move
    return a_to.sqrt() * x0_hat + (1 - a_to).sqrt() * eps_hat


def cosine_similarity(
    a: torch.Tensor,  # [B, ...]
    b: torch.Tensor,  # [B, ...]
) -> torch.Tensor:  # [B]
    """Per-sample cosine over all non-batch dims: ⟨a, b⟩ / max(‖a‖·‖b‖, eps); zero vectors give 0."""
    a2 = a.flatten(1)
    b2 = b.flatten(1)
    dot = (a2 * b2).sum(1)
    denom = (a2.square().sum(1) * b2.square().sum(1)).sqrt().clamp_min(COSINE_EPS)
    return dot / denom


def momentum_step_(
    x: torch.Tensor,  # [B, ...] updated in place
    grad: torch.Tensor,  # [B, ...]
    velocity: torch.Tensor,  # [B, ...] updated in place
    *,
    lr,  # float or [B]
    momentum: float,
    nesterov: bool = False,
    renorm=None,  # None, or float / [B]: target per-sample norm of x after the step
) -> torch.Tensor:
    """Heavy-ball step, in place:  v ← μ·v + g;  x ← x − lr·v  (Nesterov: x ← x − lr·(g + μ·v)).

    With ``renorm`` set, each sample of ``x`` is then rescaled to that norm (e.g. √D, the Gaussian shell).
    Returns ``x``.
    """
    lr_t = _per_sample(lr, x)
    velocity.mul_(momentum).add_(grad)
    step = grad + momentum * velocity if nesterov else velocity
    x.sub_(lr_t * step)
    if renorm is not None:
        target = _per_sample(renorm, x)
        norm = x.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (x.ndim - 1)).clamp_min(COSINE_EPS)
        x.mul_(target / norm)
    return x
