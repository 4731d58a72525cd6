"""Reading a screening folder back: `load_scores`, `seed_stats`, and the summary files a run leaves.

    load_scores(out)            → DataFrame, one row per (prompt, seed) at the manifest's settings; df.attrs
                                  ["complete"], ["shards_missing"]: how much of the planned run it holds
    load_scores(out, "proxy")   → the cascade's proxy-schedule rows (every seed)
    seed_stats(out)             → per seed across prompts: mean stability, mean rank (1 = most stable), count
    run_status(out)             → complete?, and per folder the verified / expected / missing shards

Only verified shards are read (`noisefast.screen.integrity`). `seed_stats` ranks the stage that holds every
seed (the proxy stage of a cascade, else the scores) and refuses an unfinished run unless ``partial=True``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from noisefast.errors import InputError, OutputError
from noisefast.screen.integrity import describe_incomplete, read_stage
from noisefast.screen.manifest import read_manifest
from noisefast.screen.shards import PROXY, SCORES

SUMMARY_K = 5


def _pandas():
    try:
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError:
        raise InputError("reading screening results needs pandas and pyarrow: pip install 'noisefast[screen]'") from None
    return pd


def run_status(out_dir) -> dict:
    """Whether the run in ``out_dir`` is complete: per folder (``scores``, and ``proxy`` for a cascade) the verified,
    expected and missing shard counts and the files that cannot be trusted (`StageStatus.as_dict`), and
    ``complete`` (None when the manifest predates the plan it would need)."""
    manifest = read_manifest(out_dir) or {}
    folders = [PROXY, SCORES] if (manifest.get("run") or {}).get("proxy_steps") else [SCORES]
    stages = {f: read_stage(out_dir, f, columns=[], manifest=manifest).status for f in folders}
    flags = [st.complete for st in stages.values()]
    return {"complete": False if False in flags else None if None in flags else True,
            **{f: st.as_dict() for f, st in stages.items()}}  # fmt: skip


def load_scores(out_dir, stage: str = "scores", *, partial: bool = True):
    """The rows of ``out_dir/scores`` (or ``/proxy`` for ``stage="proxy"``) as a pandas DataFrame, sorted by
    prompt id and seed: the verified shards only (`noisefast.screen.integrity`). ``df.attrs`` says how complete
    it is: ``complete`` (True / False / None = unknown, an older manifest), ``shards_missing``,
    ``shards_expected``, ``shards_untrusted``. ``partial=False`` refuses (`InputError`) an incomplete folder."""
    pd = _pandas()
    if stage not in ("scores", "proxy"):
        raise InputError(f"stage must be 'scores' or 'proxy', got {stage!r}")
    folder = SCORES if stage == "scores" else PROXY
    if not (Path(out_dir) / folder).is_dir():
        raise InputError(f"{out_dir} holds no screening results (no {folder}/ folder)")
    got = read_stage(out_dir, folder, manifest=read_manifest(out_dir))
    if not partial and got.status.complete is False:
        raise InputError(f"{out_dir} is an unfinished screen: {got.status.describe()}; rerun the screen command to "
                         f"finish it")  # fmt: skip
    if got.table is None:
        df = pd.DataFrame({"prompt_id": pd.Series(dtype=str), "prompt": pd.Series(dtype=str),
                           "seed": pd.Series(dtype="int64"), "stability": pd.Series(dtype="float64")})  # fmt: skip
    else:
        df = got.table.to_pandas().sort_values(["prompt_id", "seed"], kind="stable").reset_index(drop=True)
    df.attrs.update({k: v for k, v in got.status.as_dict().items() if k != "rows"})
    return df


def _ranked_stage(out_dir) -> str:
    manifest = read_manifest(out_dir) or {}
    return "proxy" if (manifest.get("run") or {}).get("proxy_steps") else "scores"


def seed_stats(out_dir, stage: str | None = None, *, partial: bool = False):
    """Per seed across prompts: ``mean_stability``, ``std_stability``, ``mean_rank`` (its rank within each
    prompt, 1 = most stable, averaged), ``best_rank``, ``prompts``; sorted by mean rank. A ranking of an unfinished
    run (some prompts or seeds missing) is refused unless ``partial=True``; ``df.attrs`` as `load_scores`'."""
    pd = _pandas()
    df = load_scores(out_dir, stage or _ranked_stage(out_dir))
    attrs = dict(df.attrs)
    if attrs.get("complete") is False and not partial:
        raise InputError(f"{out_dir} is an unfinished screen ({describe_incomplete(attrs) or 'incomplete'}): its "
                         f"seeds cannot be ranked across prompts yet; rerun the screen command to finish it, or pass "
                         f"--partial to rank what is there")  # fmt: skip
    if df.empty:
        raise InputError(f"{out_dir}: no finished shards yet")
    df = df.assign(rank=df.groupby("prompt_id")["stability"].rank(ascending=False, method="average"))
    g = df.groupby("seed")
    stats = pd.DataFrame({
        "mean_stability": g["stability"].mean(),
        "std_stability": g["stability"].std(ddof=0),
        "mean_rank": g["rank"].mean(),
        "best_rank": g["rank"].min(),
        "prompts": g["stability"].count(),
    }).reset_index()  # fmt: skip
    stats = stats.sort_values(["mean_rank", "seed"], kind="stable").reset_index(drop=True)
    stats.attrs.update(attrs)
    return stats


def _rows(seeds, scores) -> list[dict]:
    return [{"seed": int(s), "stability": float(v)} for s, v in zip(seeds, scores)]


def per_prompt(df, k: int, df_all=None) -> list[dict]:
    """Each prompt's ``k`` most stable seeds (from ``df``) and ``k`` least stable (from ``df_all``, the stage
    holding every seed)."""
    df_all = df if df_all is None else df_all
    out = []
    for pid, part in df.groupby("prompt_id", sort=False):
        part = part.sort_values(["stability", "seed"], ascending=[False, True], na_position="last", kind="stable")
        low = df_all[df_all["prompt_id"] == pid].sort_values(["stability", "seed"], ascending=[True, True],
                                                             na_position="first", kind="stable")  # fmt: skip
        stab = part["stability"].to_numpy()
        out.append({
            "prompt_id": pid,
            "prompt": part["prompt"].iloc[0],
            "seeds": int(len(low)),
            "top": _rows(part["seed"].head(k), part["stability"].head(k)),
            "bottom": _rows(low["seed"].head(k), low["stability"].head(k)),
            "mean": float(np.nanmean(stab)) if np.isfinite(stab).any() else None,
        })  # fmt: skip
    return out


def write_summary(out_dir, info: dict, k: int = SUMMARY_K) -> dict:
    """``summary.json``, ``summary.md`` and ``histogram.png`` from the finished shards plus the run facts ``info``."""
    from noisefast.atomic import atomic_write_bytes, atomic_write_json
    from noisefast.report import histogram_png, save_png

    out = Path(out_dir)
    manifest = read_manifest(out) or {}
    cascade = bool((manifest.get("run") or {}).get("proxy_steps"))
    df = load_scores(out)
    df_all = load_scores(out, "proxy") if cascade else df
    prompts = per_prompt(df, k, df_all)
    stab = df_all["stability"].to_numpy(dtype=np.float64)
    finite = stab[np.isfinite(stab)]
    summary = {
        "model": manifest.get("model"),
        "settings": manifest.get("settings"),
        "settings_hash": manifest.get("settings_hash"),
        "cascade": manifest.get("run", {}).get("proxy_steps") and {
            "proxy_steps": manifest["run"]["proxy_steps"], "rescore_top": manifest["run"]["rescore_top"]},
        "complete": df.attrs.get("complete") is not False and df_all.attrs.get("complete") is not False,
        "rows": int(len(df)),
        "rows_all_stages": int(len(df) + (len(df_all) if cascade else 0)),
        "prompts": len(prompts),
        "stability": {"mean": float(finite.mean()), "min": float(finite.min()), "max": float(finite.max()),
                      "nan": int(len(stab) - len(finite))} if len(finite) else None,
        **info,
        "per_prompt": prompts,
    }  # fmt: skip
    if len(finite):
        title = f"stability of every (prompt, seed){' (proxy schedule)' if cascade else ''}"
        save_png(histogram_png(finite.tolist(), best=float(finite.max()), worst=float(finite.min()), title=title),
                 out / "histogram.png")  # fmt: skip
        summary["histogram"] = "histogram.png"
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "summary.md", markdown(summary, k).encode())
    return summary


def markdown(summary: dict, k: int) -> str:
    s = summary.get("settings") or {}
    t = summary.get("timings") or {}
    lines = [
        f"# noisefast screen: {summary.get('model')}",
        "",
        f"{s.get('steps')} + {s.get('inversion_steps')} steps, guidance {s.get('guidance_scale')} "
        f"(inversion {s.get('inversion_guidance_scale')}), {s.get('width')}×{s.get('height')}; "
        f"settings hash `{(summary.get('settings_hash') or '')[:16]}`",
        "",
        f"{summary['prompts']} prompts, {summary['rows']} rows; this run scored {t.get('rows_scored', 0)} rows in "
        f"{t.get('score_s', 0)} s ({t.get('rows_per_s')} rows/s), wall {t.get('wall_s')} s; "
        f"{t.get('shards_skipped', 0)} of {t.get('shards_total', 0)} shards were already done.",
    ]
    if summary.get("cascade"):
        c = summary["cascade"]
        lines += ["", f"Cascade: every seed at {c['proxy_steps']} + {c['proxy_steps']} steps, each prompt's top "
                  f"{c['rescore_top']} rescored at the full schedule; bottom-{k} seeds are proxy scores."]  # fmt: skip
    if summary.get("histogram"):
        lines += ["", "![stability histogram](histogram.png)"]
    lines += ["", f"| prompt | id | top {k} (seed: stability) | bottom {k} |", "|---|---|---|---|"]
    fmt = lambda rows: ", ".join(f"{r['seed']}: {_num(r['stability'])}" for r in rows)  # noqa: E731
    for p in summary["per_prompt"]:
        text = p["prompt"].replace("|", "\\|")
        lines.append(f"| {text[:60]} | `{p['prompt_id']}` | {fmt(p['top'])} | {fmt(p['bottom'])} |")
    return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.4f}"


def print_seed_stats(out_dir, n: int = 10, *, partial: bool = False) -> str:
    """The text ``noisefast screen --summary OUT`` prints (and ``OUT/seed_stats.csv`` is written); an unfinished run
    is refused unless ``partial`` (then the first line says what is missing)."""
    from noisefast.atomic import atomic_path

    stats = seed_stats(out_dir, partial=partial)
    csv_path = Path(out_dir) / "seed_stats.csv"
    try:
        with atomic_path(csv_path) as tmp:
            stats.to_csv(tmp, index=False)
        where = f"all in {csv_path}"
    except OutputError as e:  # a bank folder others own, a read-only mount: the statistics still print
        where = f"{csv_path} not written ({e})"
    head = f"{'seed':>10} {'mean rank':>10} {'mean s':>8} {'std':>7} {'prompts':>7}"
    fmt = lambda r: (f"{int(r.seed):>10} {r.mean_rank:>10.2f} {r.mean_stability:>8.4f} {r.std_stability:>7.4f} "  # noqa: E731
                     f"{int(r.prompts):>7}")  # fmt: skip
    unfinished = stats.attrs.get("complete") is False
    lines = [f"UNFINISHED RUN ({describe_incomplete(stats.attrs) or 'incomplete'}): ranks from the finished shards "
             f"only"] if unfinished else []  # fmt: skip
    lines += [f"{len(stats)} seeds ranked across prompts (1 = most stable); {where}",
             f"most stable {min(n, len(stats))}:", head] + [fmt(r) for r in stats.head(n).itertuples()]  # fmt: skip
    if len(stats) > n:
        lines += [f"least stable {min(n, len(stats) - n)}:", head] + [fmt(r) for r in stats.tail(min(n, len(stats) - n)).itertuples()]
    return "\n".join(lines)


def manifest_json(out_dir) -> str:
    return json.dumps(read_manifest(out_dir), indent=2)


__all__ = ["load_scores", "per_prompt", "print_seed_stats", "run_status", "seed_stats", "write_summary"]
