"""Part 4 of `bench.compare`: UNet-call time and achieved TFLOP/s against a matmul peak measured in the same run.

    achieved TFLOP/s = FLOPs of one UNet call / median time of one call
    % of peak        = achieved / (2·n³ / median time of an n×n×n torch.matmul, same dtype, same run)

FLOPs per call are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one forward at batch 1
and at batch 2 of each resolution (the count is linear in the batch; the two are checked against each
other), then scaled by the batch. The SDXL UNet's widely quoted cost — about 1.59 TFLOP at 512² and 6.76
TFLOP at 1024² per batch-1 call — is reported beside the count. Also here: the full-size SDXL UNet with
random weights (`build_unet`, from ``bench/configs/sdxl_unet.json``) and random prompt conditions of the
right shapes for any SDXL-architecture UNet (`random_condition`), shared with the other GPU parts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench.common import summarize, sync, time_ms

SDXL_UNET_CONFIG = Path(__file__).parent / "configs" / "sdxl_unet.json"
DOCUMENTED_TFLOP_PER_CALL = {512: 1.59, 1024: 6.76}  # SDXL UNet, batch 1, as quoted for the base model
PROMPT_TOKENS = 77


def sdxl_unet_config() -> dict:
    return json.loads(SDXL_UNET_CONFIG.read_text())


def build_unet(config: dict, device, dtype: torch.dtype, seed: int = 0):
    """A random-weight ``UNet2DConditionModel`` from ``config``, built on ``device`` (no host copy), eval, frozen."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    unet = unet.to(dtype).eval()
    unet.requires_grad_(False)
    return unet


def random_condition(config, batch: int, pixels: int, device, dtype: torch.dtype, *, negative: bool = False,
                     seed: int = 0):
    """A random SDXL-shaped `Condition` for a UNet ``config`` (what two text encoders would hand over).

    prompt_embeds [batch, 77, cross_attention_dim], pooled [batch, P] with P = projection input − 6·time
    embed dim (SDXL: 2816 − 6·256 = 1280), time_ids [batch, 6] = (H, W, 0, 0, H, W).
    """
    from noisefast.denoisers.base import Condition

    cfg = dict(config)
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    time_ids = torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]], dtype=torch.float32)
    return Condition(
        prompt_embeds=r(batch, PROMPT_TOKENS, cfg["cross_attention_dim"]),
        pooled_prompt_embeds=r(batch, pooled),
        time_ids=time_ids.expand(batch, 6).to(device=device, dtype=dtype),
        negative_prompt_embeds=r(batch, PROMPT_TOKENS, cfg["cross_attention_dim"]) if negative else None,
        negative_pooled_prompt_embeds=r(batch, pooled) if negative else None,
    )


def _call_inputs(unet, batch: int, pixels: int):
    device, dtype = unet.device, unet.dtype
    x = torch.randn(batch, unet.config.in_channels, pixels // 8, pixels // 8, device=device, dtype=dtype)
    t = torch.full((batch,), 999, device=device)
    return x, t, random_condition(unet.config, batch, pixels, device, dtype)


def count_flops(den, unet, batch: int, pixels: int) -> int:
    """FLOPs of one ``den(x, t, cond)`` call at ``batch`` × ``pixels``², counted op by op."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t, cond = _call_inputs(unet, batch, pixels)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        den(x, t, cond)
    return int(counter.get_total_flops())


def matmul_peak(device, dtype: torch.dtype, n: int, iters: int) -> dict:
    """The matmul ceiling of this device: ``2·n³`` FLOPs per ``a @ b`` of n×n operands (random data)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = summarize(time_ms(lambda: a @ b, iters, device=device, warmup=3))
    flop = 2 * n**3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "ms": ms, "tflops": flop / (ms["median"] * 1e-3) / 1e12,
            "tflops_best": flop / (ms["min"] * 1e-3) / 1e12}


def unet_calls(unet, resolutions, batches, *, iters: int, peak_tflops: float, budget_s: float,
               compile_at=(), compile_reserve_s: float = 120.0, documented: dict | None = None):
    """(rows, skipped): per resolution × batch, ms per call and TFLOP/s of the eager UNet, then ``torch.compile``
    at the (resolution, batch) pairs of ``compile_at`` if ``compile_reserve_s`` of the budget is left for it.

    A configuration whose projected time (first untimed call × ``iters``) does not fit what is left of
    ``budget_s`` is measured with fewer calls (at least 2) or skipped; out-of-memory is recorded as a skip.
    ``documented``: quoted TFLOP per batch-1 call by resolution, reported beside the count (the SDXL UNet's).
    """
    from noisefast.denoisers.backends import make_denoiser

    eager = make_denoiser(unet, "torch")
    deadline = time.perf_counter() + budget_s
    flops = {}  # resolution → (count at batch 1, count at batch 2)
    # most telling first (batch 8, largest image), so a short budget drops the least telling; rows re-sorted below
    by_priority = sorted(((px, b) for px in resolutions for b in batches), key=lambda c: (c[1] != 8, c[1], -c[0]))
    plan = [("torch eager", lambda: eager, px, b) for px, b in by_priority]
    plan += [("torch.compile", lambda: make_denoiser(unet, "compile"), px, b) for px, b in compile_at]
    rows, skipped = [], []
    for name, make, pixels, batch in plan:
        where = dict(backend=name, resolution=pixels, latent=pixels // 8, batch=batch)
        try:
            if name == "torch.compile" and deadline - time.perf_counter() < compile_reserve_s:
                raise _Skip(f"less than {compile_reserve_s:.0f} s of the budget left for compilation")
            if deadline - time.perf_counter() <= 0:
                raise _Skip("time budget spent before this configuration")
            if pixels not in flops:
                flops[pixels] = tuple(count_flops(eager, unet, b, pixels) for b in (1, 2))
            rows.append(_one_config(make, unet, pixels, batch, iters, deadline, *flops[pixels], peak_tflops,
                                    (documented or {}).get(pixels), where))
        except _Skip as e:
            skipped.append({**where, "reason": str(e)})
        except torch.OutOfMemoryError as e:
            skipped.append({**where, "reason": f"out of memory: {str(e).splitlines()[0]}"})
        finally:
            if unet.device.type == "cuda":
                torch.cuda.empty_cache()
    order = {name: i for i, name in enumerate(("torch eager", "torch.compile"))}
    rows.sort(key=lambda r: (order[r["backend"]], r["resolution"], r["batch"]))
    return rows, skipped


class _Skip(Exception):
    pass


def _one_config(make, unet, pixels, batch, iters, deadline, flops_1, flops_2, peak_tflops, documented, where) -> dict:
    device = unet.device
    left = deadline - time.perf_counter()
    if left <= 0:
        raise _Skip("time budget spent before this configuration")
    t0 = time.perf_counter()
    den = make()
    x, t, cond = _call_inputs(unet, batch, pixels)
    with torch.inference_mode():
        den(x, t, cond)  # first call: setup (compilation for torch.compile), allocator warm-up
        sync(device)
        setup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        den(x, t, cond)
        sync(device)
        one_s = time.perf_counter() - t1
        left = deadline - time.perf_counter()
        n = min(iters, int(left / max(one_s, 1e-9)) - 1)  # - 1: the untimed warm-up call below
        if n < 2:
            raise _Skip(f"one call takes {one_s:.2f} s; {max(left, 0):.0f} s of the budget left, too little for 2 timed calls")
        ms = summarize(time_ms(lambda: den(x, t, cond), n, device=device, warmup=1))
    flops = flops_1 * batch
    tflops = flops / (ms["median"] * 1e-3) / 1e12
    return {
        **where,
        "ms_per_call": ms,
        "images_per_s": batch / (ms["median"] * 1e-3),
        "counted_gflop_per_call": flops / 1e9,
        "counted_gflop_batch1": flops_1 / 1e9,
        "count_linear_in_batch": flops_2 == 2 * flops_1,
        "documented_gflop_per_call": documented * 1e3 * batch if documented else None,
        "tflops": tflops,
        "pct_of_matmul_peak": 100 * tflops / peak_tflops,
        "setup_s": setup_s,
    }
