"""An analytic denoiser: the exact noise prediction of a Gaussian-mixture data distribution.

Data: x₀ ~ Σ_k π_k N(μ_k, σ_k² I) in the latent shape (D numbers per sample). Forward process at
cumulative alpha a = ᾱ_t: x_t = √a·x₀ + √(1−a)·ε, so

1. x_t | k ~ N(√a·μ_k, s_k² I) with s_k² = a·σ_k² + (1 − a);
2. responsibilities r_k(x_t) = softmax_k( log π_k + ℓ_k − (D/2)·log s_k² − ‖x_t − √a·μ_k‖² / (2 s_k²) ),
   ℓ_k the optional class logits of the condition (0 = the prior weights);
3. E[x₀ | x_t, k] = μ_k + (√a·σ_k² / s_k²)·(x_t − √a·μ_k),  x̂₀ = E[x₀ | x_t] = Σ_k r_k·E[x₀ | x_t, k];
4. the MMSE predictions the DDIM probability-flow ODE uses:
   ε*(x_t, t) = (x_t − √a·x̂₀) / √(1−a),   v*(x_t, t) = √a·ε* − √(1−a)·x̂₀.

All torch ops: differentiable in x (autograd, gradcheck) and exact in float64. Conditioning: the
condition's ``prompt_embeds`` ``[B, 1, K]`` are class logits ℓ (see `condition`); zeros — what
`Condition.negative` gives — mean the unconditional mixture, so classifier-free guidance works as with a UNet.
"""

from __future__ import annotations

import math

import torch

from noisefast.denoisers.base import Condition

PREDICTION_TYPES = ("epsilon", "v_prediction")


class GaussianMixtureDenoiser:
    """``model_out = den(x, t, cond)``: exact ε (or v) of an isotropic Gaussian mixture at ᾱ_t."""

    def __init__(
        self,
        means: torch.Tensor,  # [K, C, H, W] μ_k
        stds,  # float or [K]: σ_k
        alphas_cumprod,  # [T] tensor t → ᾱ_t, or a DDIMSchedule (its alphas_cumprod)
        weights=None,  # [K] π_k (normalised here); None = uniform
        prediction_type: str = "epsilon",
    ):
        if not isinstance(means, torch.Tensor) or means.ndim != 4 or not means.is_floating_point():
            raise ValueError(f"means must be a floating [K, C, H, W] tensor, got {getattr(means, 'shape', means)}")
        K = means.shape[0]
        dtype, device = means.dtype, means.device
        stds = torch.as_tensor(stds, dtype=dtype, device=device).expand(K).clone()
        if not bool((stds > 0).all()):
            raise ValueError(f"stds must be positive, got {stds.tolist()}")
        weights = torch.full((K,), 1.0 / K, dtype=dtype, device=device) if weights is None else torch.as_tensor(
            weights, dtype=dtype, device=device
        )
        if weights.shape != (K,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {K} positive numbers, got {weights.tolist()}")
        ac = getattr(alphas_cumprod, "alphas_cumprod", alphas_cumprod)
        ac = torch.as_tensor(ac, dtype=dtype, device=device)
        # ᾱ = 0 (zero terminal SNR) is fine: s_k² = 1, responsibilities = the prior, ε* = x, v* = −x̂₀
        if ac.ndim != 1 or not bool(((ac >= 0) & (ac <= 1)).all()):
            raise ValueError("alphas_cumprod must be a [T] tensor with values in [0, 1]")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.means = means  # [K, C, H, W]
        self.stds = stds  # [K]
        self.log_weights = (weights / weights.sum()).log()  # [K]
        self.alphas_cumprod = ac  # [T]
        self.prediction_type = prediction_type

    @classmethod
    def random(
        cls,
        shape,  # per-sample latent shape (C, H, W)
        num_components: int,
        alphas_cumprod,
        *,
        std: float = 0.5,
        spread: float = 1.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        prediction_type: str = "epsilon",
    ) -> "GaussianMixtureDenoiser":
        """Means μ_k ~ N(0, spread²·I), common σ_k = ``std``, uniform weights; reproducible from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        means = spread * torch.randn((num_components, *shape), generator=g, dtype=torch.float64)
        return cls(means.to(dtype), std, alphas_cumprod, prediction_type=prediction_type)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def in_channels(self) -> int:
        return self.means.shape[1]

    @property
    def sample_size(self) -> int | tuple[int, int]:
        h, w = self.means.shape[2:]
        return h if h == w else (h, w)

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def device(self) -> torch.device:
        return self.means.device

    def condition(self, class_logits=None, *, labels=None, batch: int = 1) -> Condition:
        """A `Condition` carrying class logits ℓ ``[B, K]`` (None: zeros = unconditional).

        ``labels`` (ints) instead select one component each (ℓ = 0 for it, −∞ for the others).
        """
        K = self.num_components
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long, device=self.device).reshape(-1)
            if bool(((labels < 0) | (labels >= K)).any()):
                raise ValueError(f"labels must be in [0, {K}), got {labels.tolist()}")
            logits = torch.full((labels.numel(), K), -math.inf, dtype=self.dtype, device=self.device)
            logits[torch.arange(labels.numel()), labels] = 0.0
        elif class_logits is None:
            logits = torch.zeros(batch, K, dtype=self.dtype, device=self.device)
        else:
            logits = torch.as_tensor(class_logits, dtype=self.dtype, device=self.device)
            if logits.ndim != 2 or logits.shape[1] != K:
                raise ValueError(f"class_logits must be [B, {K}], got shape {tuple(logits.shape)}")
        return Condition(prompt_embeds=logits[:, None, :])

    def x0_mean(
        self,
        x: torch.Tensor,  # [B, C, H, W] x_t
        t: torch.Tensor,  # [B] timesteps
        cond: Condition,  # batch B or 1
    ) -> torch.Tensor:  # [B, C, H, W] x̂₀ = E[x₀ | x_t]
        B = x.shape[0]
        if x.shape[1:] != self.means.shape[1:]:
            raise ValueError(f"latent must be [B, {', '.join(map(str, self.means.shape[1:]))}], got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).expand(B)
        a = self.alphas_cumprod[t.long()].to(device=x.device, dtype=x.dtype)[:, None]  # [B, 1]
        mu = self.means.to(device=x.device, dtype=x.dtype).flatten(1)  # [K, D]
        var = self.stds.to(device=x.device, dtype=x.dtype).square()[None, :]  # [1, K] σ_k²
        xf = x.flatten(1)  # [B, D]
        D = xf.shape[1]
        # 1. s_k² = a·σ_k² + (1 − a)
        s2 = a * var + (1 - a)  # [B, K]
        # 2. responsibilities from the Gaussian log-likelihoods (‖x − √a·μ_k‖² one component at a time)
        resid = [xf - a.sqrt() * mu[k] for k in range(mu.shape[0])]  # K × [B, D]
        d2 = torch.stack([r.square().sum(1) for r in resid], dim=1)  # [B, K]
        logits = self._class_logits(cond, B, x)  # [B, K]
        log_r = self.log_weights.to(x)[None, :] + logits - 0.5 * D * s2.log() - d2 / (2 * s2)
        r = torch.softmax(log_r, dim=1)  # [B, K]
        # 3. x̂₀ = Σ_k r_k·(μ_k + (√a·σ_k²/s_k²)·(x − √a·μ_k))
        gain = r * a.sqrt() * var / s2  # [B, K]
        x0 = r @ mu + sum(gain[:, k : k + 1] * resid[k] for k in range(mu.shape[0]))  # [B, D]
        return x0.reshape(x.shape)

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W] x_t
        t: torch.Tensor,  # [B] timesteps
        cond: Condition,  # batch B or 1
    ) -> torch.Tensor:  # [B, C, H, W] ε* (or v*)
        x0 = self.x0_mean(x, t, cond)
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).expand(x.shape[0])
        a = self.alphas_cumprod[t.long()].to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)  # [B, 1, 1, 1]
        # 4. ε* = (x − √a·x̂₀)/√(1−a);  v* = √a·ε* − √(1−a)·x̂₀
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        if self.prediction_type == "epsilon":
            return eps
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def _class_logits(self, cond: Condition, B: int, x: torch.Tensor) -> torch.Tensor:  # [B, K]
        if not isinstance(cond, Condition):
            raise TypeError(f"cond must be a noisefast Condition, got {type(cond).__name__}")
        pe = cond.prompt_embeds
        if pe.shape[1:] != (1, self.num_components):
            raise ValueError(
                f"Gaussian-mixture condition must carry class logits [B, 1, {self.num_components}] "
                f"(use den.condition()), got prompt_embeds of shape {tuple(pe.shape)}"
            )
        if pe.shape[0] not in (1, B):
            raise ValueError(f"condition batch {pe.shape[0]} does not match the latent batch {B}")
        return pe[:, 0, :].to(device=x.device, dtype=x.dtype).expand(B, -1)
