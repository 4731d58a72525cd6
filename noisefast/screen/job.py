"""`screen`: many prompts × many seeds → a Parquet dataset, resumable exactly once, in process or on Ray.

    res = noisefast.screen("prompts.txt", seeds=range(1000), out="runs/fox", model="builtin:digits")
    df = noisefast.screen.load_scores("runs/fox")          # one row per (prompt, seed)

The driver plans deterministic shards (`noisefast.screen.shards`), skips the finished ones, has an
executor score the rest (`LocalExecutor` here, `RayExecutor` on a cluster: the same `score_shard`), and
writes each finished shard atomically. With ``proxy_steps``/``rescore_top`` (the cascade) every seed is
first scored on an N + N schedule (``OUT/proxy/``) and each prompt's top M seeds are rescored at the full
schedule (``OUT/scores/``, ``stage="rescore"``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from noisefast.config import EngineConfig
from noisefast.defaults import DEFAULT_SHARD_SIZE
from noisefast.engine_inputs import candidate_seeds
from noisefast.errors import BackendUnavailableError, InputError, Interrupted
from noisefast.screen.prompts_io import PromptItem, make_items, read_prompt_file
from noisefast.screen.runner import LocalExecutor, shard_task
from noisefast.screen.manifest import FORMAT, build_manifest, check_same_run, environment_changes, read_manifest
from noisefast.screen.shards import OutDir, Shard, plan_grid, plan_rescore

ENGINE_OPTIONS = {f.name for f in fields(EngineConfig)} - {"batch_size"}  # batch_size= is the per-call setting


@dataclass
class ScreenResult:
    out: Path
    rows: int  # rows in OUT/scores after this run
    rows_scored: int  # rows scored by this run (all stages)
    shards_total: int
    shards_skipped: int
    seconds: float  # scoring time of this run
    wall_s: float
    complete: bool = True
    summary: dict = field(default_factory=dict)
    quarantined: list[str] = field(default_factory=list)  # untrusted shard files this run moved aside (and rescored)

    def scores(self):
        from noisefast.screen.summary import load_scores

        return load_scores(self.out)


class ScreenInterrupted(Interrupted):
    """Ctrl-C during a screen: finished shards are on disk, none half-written; ``.result`` says how far it got."""

    def __init__(self, result: ScreenResult, resume_hint: str):
        super().__init__(f"screen interrupted: {result.shards_skipped} of {result.shards_total} shards finished; "
                         f"{resume_hint}", result)  # fmt: skip


def _notice(text: str) -> None:
    """One line on stderr: something the run repaired or noticed (a shard moved aside, another environment)."""
    print(f"noisefast screen: {text}", file=sys.stderr, flush=True)


def _items(prompts, negative_prompt: str | None) -> list[PromptItem]:
    if isinstance(prompts, (str, os.PathLike)):
        items = read_prompt_file(prompts)
        if negative_prompt is not None:  # the global negative prompt fills in where the file gives none
            items = make_items((it.id, it.prompt, it.negative_prompt or negative_prompt, it.id) for it in items)
        return items
    if isinstance(prompts, Iterable):
        records = []
        for i, p in enumerate(prompts):
            if isinstance(p, PromptItem):
                records.append((f"prompt {i}", p.prompt, p.negative_prompt or negative_prompt, p.id))
            elif isinstance(p, dict):
                if "prompt" not in p:
                    raise InputError(f'prompt {i}: a dict needs a "prompt" key')
                records.append((f"prompt {i}", p["prompt"], p.get("negative_prompt") or negative_prompt, p.get("id")))
            else:
                records.append((f"prompt {i}", p, negative_prompt, None))
        items = make_items(records)
        if not items:
            raise InputError("no prompts to screen")
        return items
    raise InputError(f"prompts must be a file path or a list of prompts, got {type(prompts).__name__}")


def _table(shard: Shard, scores: np.ndarray, settings: dict, model: str, dtype: str):
    import pyarrow as pa

    n = shard.rows
    reps = [len(s) for s in shard.seeds]
    col = lambda values: np.repeat(np.asarray(values, dtype=object), reps)  # noqa: E731
    const = lambda v, t: pa.array([v] * n, type=t)  # noqa: E731
    return pa.table({
        "prompt_id": pa.array(col([it.id for it in shard.items]), type=pa.string()),
        "prompt": pa.array(col([it.prompt for it in shard.items]), type=pa.string()),
        "negative_prompt": pa.array(col([it.negative_prompt for it in shard.items]), type=pa.string()),
        "seed": pa.array(np.concatenate([np.asarray(s, dtype=np.int64) for s in shard.seeds]), type=pa.int64()),
        "stability": pa.array(np.asarray(scores, dtype=np.float32).astype(np.float64), type=pa.float64()),
        "stage": const(shard.stage, pa.string()),
        "steps": const(settings["steps"], pa.int32()),
        "inversion_steps": const(settings["inversion_steps"], pa.int32()),
        "guidance_scale": const(float(settings["guidance_scale"]), pa.float64()),
        "inversion_guidance_scale": const(float(settings["inversion_guidance_scale"]), pa.float64()),
        "height": const(settings["height"], pa.int32()),
        "width": const(settings["width"], pa.int32()),
        "model": const(model, pa.string()),
        "dtype": const(dtype, pa.string()),
        "shard": const(shard.id, pa.string()),
    })  # fmt: skip


def _top_seeds(out: Path, items: Sequence[PromptItem], m: int) -> dict[str, tuple[int, ...]]:
    """Each prompt's ``m`` most stable seeds on the proxy schedule (ties by seed, NaN last)."""
    from noisefast.screen.summary import load_scores

    df = load_scores(out, "proxy", partial=False)
    top = {}
    for pid, part in df.groupby("prompt_id", sort=False):
        part = part.sort_values(["stability", "seed"], ascending=[False, True], na_position="last", kind="stable")
        top[pid] = tuple(int(s) for s in part["seed"].head(m))
    missing = [it.id for it in items if it.id not in top]
    if missing:
        raise RuntimeError(f"proxy stage incomplete for prompt ids {missing[:3]}")
    return top


def screen(prompts, seeds: Iterable[int] | None = None, out="screen", *, config: EngineConfig | None = None,
           engine=None, negative_prompt: str | None = None, settings: dict | None = None,
           shard_size: int = DEFAULT_SHARD_SIZE, proxy_steps: int | None = None, rescore_top: int | None = None,
           top_k: int = 5, force: bool = False, ray: str | bool | None = None, ray_workers: int | None = None,
           progress: bool = False, argv: Sequence[str] | None = None, **overrides) -> ScreenResult:  # fmt: skip
    """Score every (prompt, seed) into ``out`` (see the module doc); rerunning the same call resumes.

    ``prompts``: a file (.txt/.jsonl/.csv/.parquet) or a list of strings / ``{"prompt", "id"?,
    "negative_prompt"?}`` dicts; ``seeds`` default ``range(DEFAULT_NUM_CANDIDATES)``. The Engine: ``engine`` (one
    already built, in process), else ``config`` (an `EngineConfig`), else the `EngineConfig` fields as keywords
    (``model="..."``, ``threads=1``, ``backend=...``) — what the Ray actors build theirs from too. Settings: the
    `Settings` keywords (``steps=``, ``height=``, ...) or ``settings={...}``. ``ray``: True or ``"local"`` for a
    local Ray instance, an address for a cluster. Ctrl-C raises `ScreenInterrupted`; finished shards stay and the
    same call resumes.
    """
    from noisefast.progress import ProgressBar
    from noisefast.report import versions
    from noisefast.settings import check_int

    t_wall = time.perf_counter()
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("noisefast screen needs pyarrow and pandas: pip install 'noisefast[screen]'") from None
    items = _items(prompts, negative_prompt)
    seeds = candidate_seeds(seeds)
    shard_size = check_int("shard_size", shard_size, 1, 10_000_000)
    top_k = check_int("top_k", top_k, 1, 10_000)
    if (proxy_steps is None) != (rescore_top is None):
        raise InputError("the cascade needs both --proxy-steps N and --rescore-top M (or neither)")
    if proxy_steps is not None:
        proxy_steps = check_int("proxy_steps", proxy_steps, 1, 1000)
        rescore_top = min(check_int("rescore_top", rescore_top, 1, 10_000_000), len(seeds))
    use_ray = ray is not None and ray is not False
    if use_ray and engine is not None:
        raise InputError("pass engine= or ray=, not both (Ray actors build their own Engine from config=)")
    options = {k: overrides.pop(k) for k in list(overrides) if k in ENGINE_OPTIONS}
    if sum(x is not None for x in (config, engine, options or None)) > 1:
        raise InputError("pass one of engine=, config= or engine options (model=, threads=, ...)")
    config = engine.config if engine is not None else config or EngineConfig(**options)
    if settings is not None and overrides:
        raise InputError(f"pass settings= or the keywords {sorted(overrides)}, not both")
    overrides = {k: v for k, v in (settings if settings is not None else overrides).items() if v is not None}
    outdir = OutDir(out, notice=_notice).prepare()  # before the (slow) model load: a bad or busy folder fails at once
    executor = None
    try:
        if use_ray:
            from noisefast.screen.ray_runner import RayExecutor

            executor = RayExecutor(None if ray is True else str(ray), config, workers=ray_workers)
        else:
            from noisefast.pipeline import Engine

            executor = LocalExecutor(engine if engine is not None else Engine.from_config(config))
        info, full = executor.describe(overrides)
        manifest = build_manifest(items, seeds, shard_size=shard_size, proxy_steps=proxy_steps,
                                  rescore_top=rescore_top, info=info, full=full, executor=executor.name,
                                  versions=versions(), argv=argv)  # fmt: skip
        model_id, dtype_name = manifest["model"], manifest["run"]["dtype"]
        old = None if force else read_manifest(outdir.root)  # --force starts over even from a damaged manifest
        if force:
            outdir.clear()
        elif old is None and any(outdir.root.glob("scores/*.parquet")):
            raise InputError(f"--out {outdir.root} holds scores/ files but no manifest.json; use --force to start "
                             f"over or a new --out")  # fmt: skip
        if old is not None:
            check_same_run(old, manifest, outdir.root)
            changed = environment_changes(old, manifest)
            if changed:
                _notice(f"resuming with {', '.join(changed)}: new shards' scores may differ from the earlier ones in "
                        f"the last bits (the same settings; another environment)")  # fmt: skip
        if old is None or old.get("format") != FORMAT or old.get("plan") != manifest["plan"]:
            from noisefast.atomic import atomic_write_json

            keep = {} if old is None else {k: old[k] for k in ("created", "argv", "versions", "engine") if k in old}
            atomic_write_json(outdir.root / "manifest.json", manifest | keep)  # an older format gains its plan

        stages = [("proxy", {**full, "steps": proxy_steps, "inversion_steps": proxy_steps})] if proxy_steps else []
        stages.append(("rescore" if proxy_steps else "full", full))
        bar = ProgressBar("screen", "rows", progress)
        done_rows, total_rows, scored, score_s = 0, 0, 0, 0.0
        shards_total = shards_skipped = shards_written = 0
        hint = f"rerun the same command to resume (finished shards in {outdir.root / 'scores'} are kept)"
        try:
            for stage, s in stages:
                if stage == "rescore":
                    shards = plan_rescore(items, _top_seeds(outdir.root, items, rescore_top), shard_size)
                else:
                    shards = plan_grid(stage, items, seeds, shard_size)
                todo = [sh for sh in shards if not outdir.verified(sh)]
                shards_total += len(shards)
                shards_skipped += len(shards) - len(todo)
                total_rows += sum(sh.rows for sh in todo)
                if stage == "proxy":  # the rescore stage's rows, for the ETA
                    total_rows += len(items) * rescore_top

                def on_rows(n: int) -> None:
                    nonlocal done_rows
                    done_rows += n
                    bar(done_rows, total_rows)

                t = time.perf_counter()
                for shard, scores in executor.run(((sh, shard_task(sh, s)) for sh in todo), on_rows):
                    outdir.write(shard, _table(shard, scores, s, model_id, dtype_name))
                    scored += shard.rows
                    shards_written += 1
                score_s += time.perf_counter() - t
                outdir.sweep(shards)  # untrusted files no planned shard names (a stray or damaged copy) go aside too
                if stage == "proxy":
                    total_rows -= len(items) * rescore_top
        except KeyboardInterrupt:
            bar.close()
            _record_backend(outdir.root, executor)
            partial = ScreenResult(outdir.root, 0, scored, shards_total, shards_skipped + shards_written, score_s,
                                   time.perf_counter() - t_wall, complete=False,
                                   quarantined=[str(p) for p in outdir.quarantined])  # fmt: skip
            raise ScreenInterrupted(partial, hint) from None
        finally:
            bar.close()
        from noisefast.screen.summary import write_summary

        _record_backend(outdir.root, executor)
        wall = time.perf_counter() - t_wall
        timings = {"rows_scored": scored, "score_s": round(score_s, 3),
                   "rows_per_s": round(scored / score_s, 3) if score_s > 0 else None, "wall_s": round(wall, 3),
                   "shards_total": shards_total, "shards_skipped": shards_skipped, "shards_written": shards_written}
        summary = write_summary(outdir.root, {"timings": timings, "executor": executor.name,
                                              "workers": getattr(executor, "workers", 1)}, top_k)  # fmt: skip
        return ScreenResult(outdir.root, summary["rows"], scored, shards_total, shards_skipped, score_s, wall,
                            summary["complete"], summary, [str(p) for p in outdir.quarantined])  # fmt: skip
    finally:
        if executor is not None:
            executor.close()
        outdir.release()


def _record_backend(root: Path, executor) -> None:
    """The manifest's ``backend_info``: what ran the UNet in this run (``auto``: the backend chosen per call shape and
    the ms per call it measured). Not part of what a resume must match — the decisions are cached, so a resumed run
    reads the same ones (another machine or an emptied cache may decide otherwise: scores then differ by rounding)."""
    from noisefast.atomic import atomic_write_json

    manifest = read_manifest(root)
    if manifest is not None:
        atomic_write_json(root / "manifest.json", manifest | {"backend_info": executor.backend_info()})


__all__ = ["DEFAULT_SHARD_SIZE", "ScreenInterrupted", "ScreenResult", "screen"]
