"""``noisefast bench unet``: UNet-call time per backend and the achieved TFLOP/s against the device's matmul peak,
measured in the same run.

    achieved TFLOP/s = FLOPs of one UNet call / time of one call
    % of peak        = achieved / (2·n³ / time of an n×n×n torch.matmul, same dtype, same run)

FLOPs per call are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one eager forward at batch 1 and
at batch 2 of each resolution (the count is linear in the batch; the two are checked against each other), then
scaled by the batch. For the SDXL UNet the widely quoted cost — about 1.59 TFLOP at 512² and 6.76 TFLOP at 1024² per
batch-1 call — is reported beside the count. Each backend is the Engine's denoiser for that backend
(``EngineConfig.backend``), over the same weights; the first call of each configuration (compilation, export,
engine build) is its setup, reported apart. Configurations run most telling first (batch 8, largest image); one
whose projected time does not fit what is left of the budget runs fewer calls (at least 2) or is skipped, recorded
with the reason, as is out-of-memory.
"""

from __future__ import annotations

import time

import torch

from noisefast.bench.stats import headline
from noisefast.bench.timing import sync, time_calls

DOCUMENTED_TFLOP_PER_CALL = {512: 1.59, 1024: 6.76}  # SDXL UNet, batch 1, as quoted for the base model


def is_sdxl_unet(config) -> bool:
    return list(getattr(config, "block_out_channels", ())) == [320, 640, 1280] and config.cross_attention_dim == 2048


def matmul_peak(run, device, dtype: torch.dtype, n: int, iters: int) -> dict:
    """The matmul ceiling of this device: ``2·n³`` FLOPs per ``a @ b`` of n×n operands (random data)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    name = str(dtype).replace("torch.", "")
    s = run.add("unet matmul peak", f"matmul {n}³ {name}", time_calls(lambda: a @ b, iters, device=device, warmup=3))
    flop = 2 * n**3
    return {"n": n, "dtype": name, "tflops": flop / headline(s, run.result["timing"]["statistic"]) / 1e12,
            "tflops_median": flop / s["median"] / 1e12, "tflops_best": flop / s["min"] / 1e12}  # fmt: skip


def count_flops(den, x, t, cond) -> int:
    """FLOPs of one ``den(x, t, cond)`` call, counted op by op."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        den(x, t, cond)
    return int(counter.get_total_flops())


class _Skip(Exception):
    pass


def unet_calls(run, engine, dens: dict, cond, *, resolutions, batches, iters: int, peak_tflops: float,
               budget_s: float) -> None:
    """Rows (measured) and skips per backend × resolution × batch into ``run.results``."""
    unet, device, dtype = engine.model.unet, engine.device, engine.dtype
    f, channels = engine.model.spatial_factor, int(unet.config.in_channels)
    documented = DOCUMENTED_TFLOP_PER_CALL if is_sdxl_unet(unet.config) else {}
    stat = run.result["timing"]["statistic"]
    deadline = time.perf_counter() + budget_s
    inputs = lambda b, px: (torch.randn(b, channels, px // f, px // f, device=device, dtype=dtype),  # noqa: E731
                            torch.full((b,), 999, device=device))
    flops = {}  # resolution → (count at batch 1, count at batch 2)
    by_priority = sorted(((px, b) for px in resolutions for b in batches), key=lambda c: (c[1] != 8, c[1], -c[0]))
    rows, skipped = run.results.setdefault("rows", []), run.results.setdefault("skipped", [])
    for backend, den in dens.items():
        for px, b in by_priority:
            where = dict(backend=backend, resolution=px, latent=px // f, batch=b)
            try:
                if deadline - time.perf_counter() <= 0:
                    raise _Skip("time budget spent before this configuration")
                if px not in flops:
                    # counted on eager torch (an exported backend's ops are not torch's: auto's own eager candidate)
                    eager = dens.get("torch") or getattr(engine.den, "autograd", None) or engine.den
                    flops[px] = tuple(count_flops(eager, *inputs(n, px), cond) for n in (1, 2))
                x, t = inputs(b, px)
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    den(x, t, cond)  # first call: setup (compilation, export), allocator warm-up
                    sync(device)
                    setup_s, t1 = time.perf_counter() - t0, time.perf_counter()
                    den(x, t, cond)
                    sync(device)
                    one_s, left = time.perf_counter() - t1, deadline - time.perf_counter()
                    n = min(iters, int(left / max(one_s, 1e-9)) - 1)  # - 1: the untimed warm-up call below
                    if n < 2:
                        raise _Skip(f"one call takes {one_s:.2f} s; {max(left, 0):.0f} s of the budget left, too "
                                    f"little for 2 timed calls")  # fmt: skip
                    samples = time_calls(lambda: den(x, t, cond), n, device=device, warmup=1)
                s = run.add(f"unet {backend}", f"{px}² batch {b}", samples, per=b, per_unit="image")
                secs = headline(s, stat)
                fl = flops[px][0] * b
                rows.append({**where, "s_per_call": secs, "s_per_call_median": s["median"], "images_per_s": b / secs,
                             "counted_gflop_per_call": fl / 1e9, "counted_gflop_batch1": flops[px][0] / 1e9,
                             "count_linear_in_batch": flops[px][1] == 2 * flops[px][0],
                             "documented_gflop_per_call": documented[px] * 1e3 * b if px in documented else None,
                             "tflops": fl / secs / 1e12, "pct_of_matmul_peak": 100 * fl / secs / 1e12 / peak_tflops,
                             "setup_s": setup_s})  # fmt: skip
                print(f"  {backend} {px}² batch {b}: {1e3 * secs:.2f} ms/call", flush=True)
            except _Skip as e:
                skipped.append({**where, "reason": str(e)})
            except torch.OutOfMemoryError as e:
                skipped.append({**where, "reason": f"out of memory: {str(e).splitlines()[0]}"})
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    rows.sort(key=lambda r: (list(dens).index(r["backend"]), r["resolution"], r["batch"]))
    big = [r for r in rows if r["resolution"] >= 1024 and r["batch"] >= 8]
    run.results["targets"] = [{"what": "UNet forward % of matmul peak, 1024², batch ≥ 8, best backend", "goal": "≥ 50%",
                               "value": max((r["pct_of_matmul_peak"] for r in big), default=None), "unit": "%",
                               "met": max(r["pct_of_matmul_peak"] for r in big) >= 50 if big else None}]  # fmt: skip

