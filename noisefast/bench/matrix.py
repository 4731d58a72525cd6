"""``noisefast bench scoring --matrix``: the scoring comparison over two configurations × three batch sizes, within a
time budget (the GPU run of ``bench/gpu_check.sh``).

    turbo  512², 1 + 1 steps, no CFG, inversion guidance 1   (SDXL-Turbo's use; arch:sdxl-turbo's trailing schedule)
    sdxl   1024², 4 + 4 steps, CFG 5.5, inversion guidance 1 (arch:sdxl's leading schedule)
  × batch 8, 32, 1 (most telling first: turbo 8, 32, 1, then sdxl 8, 1, 32)

Each row is one `noisefast.bench.scoring.measure` (its own group ``scoring turbo b8`` ...): at batch 1 the per-seed
users, above it the batched ones (and ``compiled`` when asked), noisefast and its variants (default: the fast path).
On the built-in architectures each configuration gets its own model (its schedule); a user's model runs both
configurations' settings. With ``arch:tiny`` (a CPU dry run of the flow) the images are 64² and the batches 1, 2, 4.
A row whose projected time — the last row's seconds per seed × seeds × runs — does not fit what is left of the
budget is recorded as skipped; out-of-memory likewise.
"""

from __future__ import annotations

import time

import torch

from noisefast.bench.models import ARCH_SETTINGS, arch_of, open_engine, plain_model, variant_engine
from noisefast.bench.scoring import measure
from noisefast.errors import InputError

CONFIGS = {"turbo": "sdxl-turbo", "sdxl": "sdxl"}  # configuration → the architecture (schedule) and its settings
ORDER = [("turbo", 8), ("turbo", 32), ("turbo", 1), ("sdxl", 8), ("sdxl", 1), ("sdxl", 32)]
DRY_BATCHES = {1: 1, 8: 2, 32: 4}


def seeds_for(config: str, batch: int, dry: bool) -> int:
    """Seeds per timed run: several chunks where a chunk is cheap, one chunk where it is not."""
    if dry:
        return 2 * batch if batch == 1 else batch
    return max(batch, 16) if config == "turbo" else max(batch, 4)


def run_matrix(run, config, variants: dict, *, prompt: str, users, through, rounds: int, budget_s: float,
               workdir, settings_overrides: dict, on_engine=None) -> None:
    """Measures the rows of `ORDER` into ``run``; ``run.results["rows"]`` (measured or skipped) and ``headline``.
    ``on_engine(engine, config)`` is told about each configuration's engine as it opens (the result records it)."""
    arch = arch_of(config)
    dry = arch == "tiny"
    deadline = time.perf_counter() + budget_s
    rows, last = run.results.setdefault("rows", []), {}  # last: configuration → seconds per seed of its last row
    loaded = {}
    for name, batch in ORDER:
        b = DRY_BATCHES[batch] if dry else batch
        seeds = seeds_for(name, b, dry)
        where = {"config": name, "batch": b, "seeds": seeds}
        runs = len(users) + 1 + len(variants)  # ways per row, each 1 untimed + `rounds` timed runs
        projected = last.get(name, 0.0) * seeds * runs * (1 + rounds) * (2.0 if b == 1 else 1.0)
        left = deadline - time.perf_counter()
        if left <= 0 or projected > left:
            rows.append({**where, "skipped": f"projected {projected:.0f} s, {max(left, 0):.0f} s of the budget left"})
            continue
        try:
            if name not in loaded:
                loaded.clear()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                cfg = config if arch in (None, "tiny") else config.replace(model="arch:" + CONFIGS[name])
                engine = open_engine(cfg, workdir)
                if engine.kind == "pixel":
                    raise InputError(f"--matrix measures SDXL-architecture models (512² and 1024² settings), not "
                                     f"{cfg.model}")  # fmt: skip
                if on_engine is not None:
                    on_engine(engine, cfg)
                loaded[name] = (engine, plain_model(engine, cfg, workdir),
                                {v: variant_engine(engine, cfg, vc.replace(model=cfg.model), workdir)
                                 for v, vc in variants.items()})  # fmt: skip
            engine, plain, var = loaded[name]
            st = {**ARCH_SETTINGS[CONFIGS[name]], **({"height": 64, "width": 64} if dry else {}),
                  **settings_overrides, "batch_size": b}  # fmt: skip
            s = engine.settings(**st)
            t0 = time.perf_counter()
            res = measure(run, engine, plain, var, prompt=prompt, seeds=list(range(seeds)), s=s,
                          users=["per-seed"] if b == 1 else [u for u in users if u != "per-seed"], through=through,
                          rounds=rounds, group=f"scoring {name} b{b}")  # fmt: skip
            wall = time.perf_counter() - t0
            last[name] = wall / (seeds * runs * (1 + rounds))
            rows.append({**where, **(res or {"error": run.result["errors"].get(f"scoring {name} b{b}: warm-up and "
                                                                               "scores")}), "wall_s": wall})  # fmt: skip
        except torch.OutOfMemoryError as e:
            rows.append({**where, "skipped": f"out of memory: {str(e).splitlines()[0]}"})
        run.results["headline"] = headline(rows)
        print(f"[bench scoring --matrix] {name} batch {b}: {rows[-1].get('ratio', rows[-1].get('skipped'))}",
              flush=True)
    run.results["headline"] = headline(rows)


def headline(rows: list[dict]) -> dict:
    """Per configuration: the best noisefast rate against the best diffusers rate over all measured batches."""
    out = {}
    for config in CONFIGS:
        rs = [r for r in rows if r["config"] == config and "noises_per_second" in r]
        best = lambda pred: max(((rate, name, r["batch"]) for r in rs  # noqa: E731
                                 for name, rate in r["noises_per_second"].items() if pred(name)), default=None)
        ours, theirs = best(lambda n: n.startswith("noisefast")), best(lambda n: n.startswith("diffusers"))
        if ours and theirs:
            out[config] = {"noisefast": {"way": ours[1], "batch": ours[2], "noises_per_second": ours[0]},
                           "strongest_baseline": {"way": theirs[1], "batch": theirs[2], "noises_per_second": theirs[0]},
                           "ratio": ours[0] / theirs[0]}  # fmt: skip
    return out
