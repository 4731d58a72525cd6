"""Fused kernels (noisefast.ops) against the same math in eager torch (noisefast.ref).

Latents [8, 4, 128, 128] and [32, 4, 64, 64]; fp32 on the CPU; fp16, bf16 and fp32 on a GPU when
there is one. Per case: median time of eager and fused, the speed-up, and the fused op's achieved
bandwidth (bytes it must move / time) next to a plain copy of one latent measured in the same run
(CPU: ``dst.copy_(src)`` timed alike; GPU: device-to-device copy, CUDA events).

Cases (bytes moved by the fused op, in latent-sized tensors):
  ddim_cfg          denoising move with classifier-free guidance: reads x, m_c, m_u, writes x'  (4)
  ddim_invert       inversion move without guidance: reads x, m, writes x'                     (3)
  ddim_cfg_fwd_bwd  ddim_cfg forward + backward to x, m_c, m_u (Algorithm 2's inner step)      (8)
  cosine            per-sample cosine: reads a, b                                              (2)
  cosine_fwd_bwd    forward + backward to a and b                                              (6)
  momentum          heavy-ball step in place: reads x, g, v, writes x, v                       (5)
  momentum_renorm   Nesterov step + per-sample renormalisation (second pass over x)            (7)

    python bench/bench_kernels.py [--json out.json] [--rounds 100] [--threads N] [--skip-gpu]
    pytest bench/bench_kernels.py --benchmark-only [-k cpu]          # the same cases, pytest-benchmark
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import pytest
import torch

if __package__ in (None, ""):  # run as a script (python bench/bench_kernels.py): make the bench package importable
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model, summarize, time_round_robin  # noqa: E402
from noisefast import _ext, ops, ref  # noqa: E402

SHAPES = [(8, 4, 128, 128), (32, 4, 64, 64)]
GPU_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


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


def _targets(skip_gpu: bool = False):
    """(device, dtype) pairs to measure here."""
    out = [("cpu", torch.float32)]
    if torch.cuda.is_available() and not skip_gpu:
        out += [("cuda", dt) for dt in GPU_DTYPES]
    return out


# --- timing ----------------------------------------------------------------------------------------------


def _timed(fns: dict, rounds: int, device: str, warmup: int = 10) -> dict:
    """Summary (median, quartiles, min, max, n) of the ms of each fns[name](): `bench.common.time_round_robin`
    (round-robin so load drift on a shared machine hits all alike; CUDA events on the current stream on a GPU)."""
    return {name: summarize(ts) for name, ts in time_round_robin(fns, rounds, device=device, warmup=warmup).items()}


def measure(rounds: int, skip_gpu: bool = False, *, targets=None, shapes=SHAPES) -> list[dict]:
    """One row per (device, dtype) of ``targets`` (default: all here) × shape × case; ``*_ms`` are medians."""
    rows = []
    for device, dtype in targets or _targets(skip_gpu):
        for shape in shapes:
            numel = torch.Size(shape).numel()
            itemsize = torch.empty((), dtype=dtype).element_size()
            copy = _timed({"copy": _copy(shape, dtype, device)}, rounds, device)["copy"]
            copy_gbs = 2 * numel * itemsize / copy["median"] / 1e6
            for case, (tensors, eager, fused) in CASES.items():
                ms = _timed({"eager": eager(shape, dtype, device), "fused": fused(shape, dtype, device)}, rounds, device)
                e, f = ms["eager"]["median"], ms["fused"]["median"]
                fused_gbs = tensors * numel * itemsize / f / 1e6
                rows.append(dict(case=case, shape=list(shape), device=device, dtype=str(dtype).replace("torch.", ""),
                                 eager_ms=e, fused_ms=f, speedup=e / f, fused_gbs=fused_gbs, copy_gbs=copy_gbs,
                                 pct_of_copy=100 * fused_gbs / copy_gbs, latent_tensors_moved=tensors,
                                 eager_ms_stats=ms["eager"], fused_ms_stats=ms["fused"], copy_ms_stats=copy))
                print(f"  {device} {rows[-1]['dtype']} {shape} {case}: x{rows[-1]['speedup']:.2f}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| op | latent | device | dtype | eager ms | fused ms | speed-up (medians) | speed-up (best times) "
             "| fused GB/s | copy GB/s | % of copy |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        # On the CPU the latents sit in cache between calls: bandwidth there says little, so only GPUs show it.
        bw = (f"{r['fused_gbs']:.0f} | {r['copy_gbs']:.0f} | {r['pct_of_copy']:.0f}%" if r["device"] == "cuda"
              else "– | – | –")
        # best times: what a busy shared machine disturbs least (preemption only ever adds time)
        best = r["eager_ms_stats"]["min"] / r["fused_ms_stats"]["min"]
        lines.append(f"| {r['case']} | {'×'.join(map(str, r['shape']))} | {r['device']} | {r['dtype']} | "
                     f"{r['eager_ms']:.3f} | {r['fused_ms']:.3f} | **{r['speedup']:.2f}×** | {best:.2f}× | {bw} |")
    return "\n".join(lines)


def machine() -> dict:
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), cpu=cpu_model(),
                torch_threads=torch.get_num_threads(), torch=torch.__version__,
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, build=_ext.build_info())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write machine info and all rows here")
    parser.add_argument("--rounds", type=int, default=100, help="timed calls per implementation (median)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (the CPU kernels follow it)")
    parser.add_argument("--skip-gpu", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(f"# bench_kernels {info['date']}  cpu: {info['cpu']} ({info['torch_threads']} threads)  gpu: {info['gpu']}")
    rows = measure(args.rounds, args.skip_gpu)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, rows=rows), f, indent=1)


# --- pytest-benchmark ------------------------------------------------------------------------------------


def _sync(fn, device):
    if device != "cuda":
        return fn
    def run():
        fn()
        torch.cuda.synchronize()
    return run


_PARAMS = [pytest.param(dev, dt, id=f"{dev}-{str(dt).replace('torch.', '')}",
                        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
                        if dev == "cuda" else [])
           for dev, dt in [("cpu", torch.float32)] + [("cuda", dt) for dt in GPU_DTYPES]]


@pytest.mark.parametrize("impl", ["eager", "fused"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device, dtype", _PARAMS)
def test_kernel(benchmark, device, dtype, shape, case, impl):
    tensors, eager, fused = CASES[case]
    benchmark.group = f"{case} {'x'.join(map(str, shape))} {device} {str(dtype).replace('torch.', '')}"
    benchmark(_sync((eager if impl == "eager" else fused)(shape, dtype, device), device))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device, dtype", _PARAMS)
def test_copy(benchmark, device, dtype, shape):
    benchmark.group = f"copy {'x'.join(map(str, shape))} {device} {str(dtype).replace('torch.', '')}"
    benchmark(_sync(_copy(shape, dtype, device), device))


if __name__ == "__main__":
    main()
