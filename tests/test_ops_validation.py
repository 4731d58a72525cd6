"""Bad input to noisefast.ops raises TypeError/ValueError naming what was passed; never a crash."""

from __future__ import annotations

import math

import pytest
import torch
from _ops_helpers import requires_extension

from noisefast import ops

pytestmark = requires_extension

X = torch.randn(3, 4, 5, 5)
M = torch.randn(3, 4, 5, 5)


def ddim(**overrides):
    kwargs = dict(x=X, model_out=M, alpha_from=0.3, alpha_to=0.9)
    kwargs.update(overrides)
    return ops.ddim_move(kwargs.pop("x"), kwargs.pop("model_out"), kwargs.pop("alpha_from"), kwargs.pop("alpha_to"),
                         **kwargs)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(model_out=torch.randn(3, 4, 5, 6)), ValueError, r"model_out has shape \(3, 4, 5, 6\) but x has \(3, 4, 5, 5\)"),
    (dict(model_out_uncond=torch.randn(2, 4, 5, 5)), ValueError, r"model_out_uncond has shape \(2, 4, 5, 5\)"),
    (dict(model_out=M.half()), TypeError, r"model_out has dtype torch.float16 but x has torch.float32"),
    (dict(x=X.to(torch.int32), model_out=M.to(torch.int32)), TypeError, r"x has dtype torch.int32"),
    (dict(model_out=M.to("meta")), ValueError, r"model_out is on meta but x is on cpu"),
    (dict(model_out=M.numpy()), TypeError, r"model_out must be a torch.Tensor, got ndarray"),
    (dict(prediction_type="sample"), ValueError, r"prediction_type must be one of .* got 'sample'"),
    (dict(alpha_from=0.0), ValueError, r"alpha_from must be in \(0, 1\]; got 0.0"),
    (dict(alpha_to=1.5), ValueError, r"alpha_to must be in \[0, 1\]; got 1.5"),
    (dict(alpha_to=math.nan), ValueError, r"alpha_to must be in \[0, 1\]; got nan"),
    (dict(alpha_from=torch.tensor([0.5, -0.1, 0.2])), ValueError, r"alpha_from must be in \(0, 1\]; got \[-0.1"),
    (dict(alpha_from=torch.tensor([0.5, 0.2])), ValueError, r"alpha_from must be a float or a \[B\] tensor with B = 3, got shape \(2,\)"),
    (dict(alpha_from=torch.full((3, 1), 0.5)), ValueError, r"got shape \(3, 1\)"),
    (dict(alpha_from="0.5"), TypeError, r"alpha_from must be a float or a \[B\] tensor, got str"),
    (dict(model_out_uncond=M, guidance_scale=math.inf), ValueError, r"guidance_scale must be finite; got inf"),
    (dict(guidance_scale=torch.tensor([1.0, math.nan, 2.0])), ValueError, r"guidance_scale must be finite; got \[nan\]"),
    (dict(clip_sample_range=-1.0), ValueError, r"clip_sample_range must be finite and > 0; got -1.0"),
    (dict(clip_sample_range=torch.tensor(1.0)), TypeError, r"clip_sample_range must be None or a float, got Tensor"),
    (dict(x=torch.tensor(1.0), model_out=torch.tensor(1.0)), ValueError, r"at least 1 dims .* got shape \(\)"),
])
def test_ddim_move_rejects(overrides, error, message):
    with pytest.raises(error, match=message):
        ddim(**overrides)


@pytest.mark.parametrize("a, b, error, message", [
    (X, torch.randn(3, 4, 5, 4), ValueError, r"b has shape \(3, 4, 5, 4\) but a has \(3, 4, 5, 5\)"),
    (X, M.double(), TypeError, r"b has dtype torch.float64 but a has torch.float32"),
    (torch.randn(3), torch.randn(3), ValueError, r"at least 2 dims \[B, \.\.\.\], got shape \(3,\)"),
    (X.to(torch.complex64), M.to(torch.complex64), TypeError, r"a has dtype torch.complex64"),
])
def test_cosine_rejects(a, b, error, message):
    with pytest.raises(error, match=message):
        ops.cosine_similarity(a, b)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(grad=torch.randn(3, 4, 5)), ValueError, r"grad has shape \(3, 4, 5\) but x has \(3, 4, 5, 5\)"),
    (dict(velocity=torch.zeros(3, 4, 5, 5, dtype=torch.bfloat16)), TypeError, r"velocity has dtype torch.bfloat16"),
    (dict(lr=math.nan), ValueError, r"lr must be finite; got nan"),
    (dict(lr=torch.ones(4)), ValueError, r"lr must be a float or a \[B\] tensor with B = 3, got shape \(4,\)"),
    (dict(momentum=math.inf), ValueError, r"momentum must be finite, got inf"),
    (dict(momentum=torch.tensor(0.5)), TypeError, r"momentum must be a float, got Tensor"),
    (dict(renorm=0.0), ValueError, r"renorm must be finite and > 0; got 0.0"),
    (dict(renorm=torch.tensor([1.0, 2.0, -3.0])), ValueError, r"renorm must be finite and > 0; got \[-3.0\]"),
    (dict(velocity="x"), ValueError, r"x and velocity share memory"),
    (dict(grad="x"), ValueError, r"x and grad share memory"),
    (dict(velocity="x[1:]"), ValueError, r"x and velocity share memory"),  # overlapping views, different pointers
    (dict(x="expanded"), ValueError, r"x is updated in place but its elements share memory .* strides \(0, "),
    (dict(velocity="expanded"), ValueError, r"velocity is updated in place but its elements share memory"),
    (dict(x="windows"), ValueError, r"x is updated in place but its elements share memory"),  # as_strided overlap
])
def test_momentum_rejects(overrides, error, message):
    """Every refusal comes before anything is written: neither x nor velocity changes (no half-applied step)."""
    base = torch.cat([X, X[:1]]).clone()  # one spare row, for the overlapping views
    x, grad, velocity = base[:3], M.clone(), torch.randn_like(X)
    views = {"x": lambda: x, "x[1:]": lambda: base[1:4], "expanded": lambda: X[:1].clone().expand(3, 4, 5, 5),
             "windows": lambda: torch.zeros(400).as_strided((3, 4, 5, 5), (50, 25, 5, 1))}  # fmt: skip
    kwargs = dict(x=x, grad=grad, velocity=velocity, lr=0.1, momentum=0.5)
    kwargs.update({k: views[v]() if isinstance(v, str) else v for k, v in overrides.items()})
    written = [kwargs["x"], kwargs["velocity"]]
    before = [t.clone() for t in written]
    with pytest.raises(error, match=message):
        ops.momentum_step_(kwargs.pop("x"), kwargs.pop("grad"), kwargs.pop("velocity"), **kwargs)
    assert all(torch.equal(t, b) for t, b in zip(written, before)), "a rejected call must not touch x or velocity"


def test_momentum_accepts_separate_views_of_one_buffer():
    """Disjoint views (two halves of one buffer, a transposed x) are fine: only real overlaps are refused."""
    buf = torch.zeros(3, 2, 4, 5, 5)
    ref_x, ref_v = torch.zeros(3, 4, 5, 5), torch.zeros(3, 4, 5, 5)
    ops.momentum_step_(buf[:, 0], M, buf[:, 1], lr=0.1, momentum=0.5)
    ops.momentum_step_(ref_x, M, ref_v, lr=0.1, momentum=0.5)
    assert torch.equal(buf[:, 0], ref_x) and torch.equal(buf[:, 1], ref_v)
