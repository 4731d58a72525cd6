"""The fused ops inside torch.compile (inductor, CPU): one graph, forward and backward, same numbers."""

from __future__ import annotations

import torch
from _ops_helpers import randn, requires_extension

from noisefast import ops

pytestmark = requires_extension


def inversion_score(noise, m_c, m_u, velocity):
    """A DDIM move there and back, the cosine with the start, and a momentum step on a copy."""
    x0 = ops.ddim_move(noise, m_c, 0.05, 0.9, model_out_uncond=m_u, guidance_scale=5.5, clip_sample_range=3.0)
    back = ops.ddim_move(x0, m_c, 0.9, 0.05, prediction_type="v_prediction")
    score = ops.cosine_similarity(back, noise)
    moved = noise.detach().clone()
    ops.momentum_step_(moved, m_c.detach(), velocity, lr=0.1, momentum=0.5, nesterov=True, renorm=8.0)
    return score, moved


def test_compiled_forward_and_backward_match_eager():
    torch._dynamo.reset()
    shape = (2, 4, 8, 8)
    args = [randn(shape, torch.float32, "cpu", seed) for seed in range(3)]
    runs = {}
    for name, fn in (("eager", inversion_score), ("compiled", torch.compile(inversion_score, fullgraph=True))):
        noise, m_c, m_u = (t.clone().requires_grad_(True) for t in args)
        velocity = torch.zeros(shape)
        score, moved = fn(noise, m_c, m_u, velocity)
        score.sum().backward()
        runs[name] = (score.detach(), moved, velocity, noise.grad, m_c.grad, m_u.grad)
    for eager, compiled in zip(runs["eager"], runs["compiled"]):
        torch.testing.assert_close(compiled, eager)
