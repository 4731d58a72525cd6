"""``noisefast bench kernels``: the fused ops (`noisefast.ops`) against the same math in eager torch (`noisefast.ref`).

Per (device, dtype, latent shape): a plain copy of one latent (``dst.copy_(src)``) — the device's measured copy
bandwidth —, then per case the eager and the fused implementation timed in alternated rounds. Reported: the
speed-up, and the fused op's achieved bandwidth (latent-sized tensors it must move × bytes / time) as a
percentage of the copy's (on a CPU the latents stay in cache between calls: the JSON keeps it, the table does not).

Cases (latent-sized tensors the fused op moves):
  ddim_cfg          denoising move with classifier-free guidance: reads x, m_c, m_u, writes x'  (4)
  ddim_invert       inversion move without guidance: reads x, m, writes x'                     (3)
  ddim_cfg_fwd_bwd  ddim_cfg forward + backward to x, m_c, m_u (Algorithm 2's inner step)      (8)
  cosine            per-sample cosine: reads a, b                                              (2)
  cosine_fwd_bwd    forward + backward to a and b                                              (6)
  momentum          heavy-ball step in place: reads x, g, v, writes x, v                       (5)
  momentum_renorm   Nesterov step + per-sample renormalisation (second pass over x)            (7)
"""

from __future__ import annotations

import torch

from noisefast import ops, ref
from noisefast.bench.stats import geomean, headline
from noisefast.bench.timing import time_round_robin

SHAPES = [(8, 4, 128, 128), (32, 4, 64, 64)]
GPU_DTYPES = ("float16", "bfloat16", "float32")


def _ddim(fn, grad: bool):
    def make(shape, dtype, device):
        x, m_c, m_u = (torch.randn(shape, dtype=dtype, device=device, requires_grad=grad) for _ in range(3))
        g = torch.randn(shape, dtype=dtype, device=device)

        def run():
            out = fn(x, m_c, 0.05, 0.3, model_out_uncond=m_u, guidance_scale=5.5)
            if grad:
                torch.autograd.grad(out, (x, m_c, m_u), g)
        return run
    return make


def _ddim_invert(fn):
    def make(shape, dtype, device):
        x, m = (torch.randn(shape, dtype=dtype, device=device) for _ in range(2))
        return lambda: fn(x, m, 0.3, 0.05)
    return make


def _cosine(fn, grad: bool):
    def make(shape, dtype, device):
        a, b = (torch.randn(shape, dtype=dtype, device=device, requires_grad=grad) for _ in range(2))
        g = torch.ones(shape[0], dtype=dtype, device=device)

        def run():
            out = fn(a, b)
            if grad:
                torch.autograd.grad(out, (a, b), g)
        return run
    return make


def _momentum(fn, renorm: bool):
    def make(shape, dtype, device):
        x, g = (torch.randn(shape, dtype=dtype, device=device) for _ in range(2))
        v = torch.zeros(shape, dtype=dtype, device=device)
        norm = float(x[0].numel()) ** 0.5
        kwargs = dict(lr=1e-3, momentum=0.5, nesterov=renorm, renorm=norm if renorm else None)
        return lambda: fn(x, g, v, **kwargs)
    return make


# name: (latent-sized tensors moved by the fused op, eager maker, fused maker)
CASES = {
    "ddim_cfg": (4, _ddim(ref.ddim_move, False), _ddim(ops.ddim_move, False)),
    "ddim_invert": (3, _ddim_invert(ref.ddim_move), _ddim_invert(ops.ddim_move)),
    "ddim_cfg_fwd_bwd": (8, _ddim(ref.ddim_move, True), _ddim(ops.ddim_move, True)),
    "cosine": (2, _cosine(ref.cosine_similarity, False), _cosine(ops.cosine_similarity, False)),
    "cosine_fwd_bwd": (6, _cosine(ref.cosine_similarity, True), _cosine(ops.cosine_similarity, True)),
    "momentum": (5, _momentum(ref.momentum_step_, False), _momentum(ops.momentum_step_, False)),
    "momentum_renorm": (7, _momentum(ref.momentum_step_, True), _momentum(ops.momentum_step_, True)),
}


def _copy(shape, dtype, device):
    src = torch.randn(shape, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def group_name(device: str, dtype: str, shape) -> str:
    return f"kernels {device} {dtype} {'×'.join(map(str, shape))}"


def measure(run, *, device: str, dtypes, shapes, cases, rounds: int, warmup: int) -> None:
    """Times every (dtype, shape, case) into ``run`` (a `noisefast.bench.schema.Run`); ``run.results["rows"]``."""
    stat = run.result["timing"]["statistic"]
    rows = run.results.setdefault("rows", [])
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        itemsize = torch.empty((), dtype=dtype).element_size()
        for shape in shapes:
            group, numel = group_name(device, dtype_name, shape), torch.Size(shape).numel()
            with run.part(group):
                t = time_round_robin({"copy": _copy(shape, dtype, device)}, rounds, device=device, warmup=warmup)
                copy_s = headline(run.add(group, "copy", t["copy"], latent_tensors_moved=2), stat)
                copy_gbs = 2 * numel * itemsize / copy_s / 1e9
                for case in cases:
                    tensors, eager, fused = CASES[case]
                    t = time_round_robin({"eager": eager(shape, dtype, device), "fused": fused(shape, dtype, device)},
                                         rounds, device=device, warmup=warmup)  # fmt: skip
                    e = headline(run.add(group, f"{case} eager", t["eager"]), stat)
                    f = headline(run.add(group, f"{case} fused", t["fused"], latent_tensors_moved=tensors), stat)
                    fused_gbs = tensors * numel * itemsize / f / 1e9
                    rows.append(dict(group=group, case=case, shape=list(shape), device=device, dtype=dtype_name,
                                     eager_s=e, fused_s=f, speedup=e / f, fused_gbs=fused_gbs, copy_gbs=copy_gbs,
                                     pct_of_copy=100 * fused_gbs / copy_gbs, latent_tensors_moved=tensors))  # fmt: skip
                    print(f"  {group} {case}: {e / f:.2f}×", flush=True)
    if rows:
        run.results["geomean_speedup"] = geomean([r["speedup"] for r in rows])
        run.results["min_pct_of_copy"] = min(r["pct_of_copy"] for r in rows)
        run.results["targets"] = [{"what": "fused kernels, % of the device's copy bandwidth (worst op)",
                                   "goal": "≥ 85% (GPU)", "value": run.results["min_pct_of_copy"] if device == "cuda"
                                   else None, "unit": "%", "met": run.results["min_pct_of_copy"] >= 85
                                   if device == "cuda" else None}]  # fmt: skip
