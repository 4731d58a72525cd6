"""Reference sampling of a built-in model with diffusers' own ``DDIMScheduler`` loop (η = 0, CFG).

This is the library's sampler, used to check the model and its judge independently of noisefast's
own DDIM core. Noise for seed ``s`` is ``torch.randn((1, C, H, W), generator=torch.Generator().manual_seed(s))``
— one generator per sample, as diffusers draws a list of generators.
"""

from __future__ import annotations

import torch

from noisefast.builtin.prompts import NEGATIVE_PROMPT, PROMPT_TEMPLATE, class_prompt, encode_prompts


def seed_noise(seeds, shape) -> torch.Tensor:
    """[N, *shape] standard normal noise, row i drawn from a CPU generator seeded ``seeds[i]``."""
    return torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample_digits(components, labels, noise, *, steps: int, guidance_scale: float, template: str = PROMPT_TEMPLATE):
    """DDIM samples [N, C, H, W] (model range) for digit ``labels`` [N] from ``noise`` [N, C, H, W].

    Guided output ``ε = ε_u + w·(ε_c − ε_u)`` (w ≤ 1: conditional only), stepped by diffusers'
    ``DDIMScheduler.step`` with η = 0.
    """
    from diffusers import DDIMScheduler

    labels = [int(v) for v in labels]
    if noise.ndim != 4 or noise.shape[0] != len(labels):
        raise ValueError(f"noise must be [N, C, H, W] with N = {len(labels)} labels, got shape {tuple(noise.shape)}")
    unet, sched = components.unet, DDIMScheduler.from_config(components.scheduler.config)
    sched.set_timesteps(steps)
    cond = encode_prompts(components.tokenizer, components.text_encoder, [class_prompt(v, template) for v in labels])
    guided = guidance_scale > 1.0
    if guided:
        uncond = encode_prompts(components.tokenizer, components.text_encoder, [NEGATIVE_PROMPT]).expand_as(cond)
        cond = torch.cat([uncond, cond])
    x = noise.to(unet.dtype) * sched.init_noise_sigma
    for t in sched.timesteps:
        inp = torch.cat([x, x]) if guided else x
        eps = unet(inp, t, encoder_hidden_states=cond).sample
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x
