"""Do seeds stable for one prompt stay stable for others? (decides the server's ``--bank-any-prompt``)

Scores the 10 digit prompts × N seeds with `Engine.select` (one list of prompts: shared UNet batches), then
per prompt pair the Spearman and Kendall rank correlation of the seeds' stability, and per prompt how many
of its top-10 seeds fall in the global top 10 % (seeds ranked by mean stability over the *other* prompts,
so a prompt never votes for itself). Chance level: 10 % of top-10 seeds (= 1 of 10).

    python bench/seed_transfer.py --seeds 200 --steps 10      # → bench/results/seed_transfer-DATE.{json,md}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), 0-based."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):
        m = x == v
        if m.sum() > 1:
            r[m] = r[m].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b, O(n²) (n = a few hundred)."""
    da, db = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    conc = float((da * db).sum())
    return conc / float(np.sqrt((da != 0).sum() * (db != 0).sum()))


def analyse(stab: np.ndarray, top: int = 10, frac: float = 0.10) -> dict:
    """``stab`` [P, N]: stability of N seeds under P prompts."""
    p, n = stab.shape
    pairs = [(i, j) for i in range(p) for j in range(i + 1, p)]
    sp = np.array([spearman(stab[i], stab[j]) for i, j in pairs])
    kd = np.array([kendall(stab[i], stab[j]) for i, j in pairs])
    k_global = max(1, int(round(frac * n)))
    hits = []
    for i in range(p):
        others = np.delete(stab, i, axis=0).mean(0)
        global_top = set(np.argsort(-others, kind="stable")[:k_global].tolist())
        mine = np.argsort(-stab[i], kind="stable")[:top].tolist()
        hits.append(sum(s in global_top for s in mine) / top)
    # the practical question: pick by the other prompts' mean, how good is that seed for this prompt?
    pick_pct = []
    for i in range(p):
        others = np.delete(stab, i, axis=0).mean(0)
        chosen = int(np.argmax(others))
        pick_pct.append(float((stab[i] < stab[i, chosen]).mean()))  # percentile of the transferred pick
    return {
        "prompts": p, "seeds": n,
        "spearman": {"mean": float(sp.mean()), "min": float(sp.min()), "max": float(sp.max())},
        "kendall": {"mean": float(kd.mean()), "min": float(kd.min()), "max": float(kd.max())},
        "top10_in_global_top10pct": {"mean": float(np.mean(hits)), "per_prompt": hits, "chance": frac},
        "transferred_best_percentile": {"mean": float(np.mean(pick_pct)), "min": float(np.min(pick_pct)),
                                        "per_prompt": pick_pct},  # fmt: skip
        "stability_spread": {"across_seeds_std": float(stab.std(1).mean()), "across_prompts_std": float(stab.std(0).mean())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's (10)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    from noisefast.pipeline import Engine

    torch.set_num_threads(args.threads)
    eng = Engine.from_pretrained("builtin:digits")
    s = eng.settings(steps=args.steps, inversion_steps=args.steps, batch_size=64)
    prompts = [f"a handwritten digit {n}" for n in NAMES]
    t = time.perf_counter()
    sels = eng.select(prompts, range(args.seeds), settings=s)
    secs = time.perf_counter() - t
    stab = np.stack([np.array([sel.score_of(k) for k in range(args.seeds)]) for sel in sels])
    res = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.processor() or platform.system()}",
        "load": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "command": f"python bench/seed_transfer.py --seeds {args.seeds} --steps {args.steps}",
        "settings": s.as_dict(), "score_seconds": round(secs, 2),
    } | analyse(stab)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"seed_transfer-{res['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2))
    sp, kd, hit, pick = res["spearman"], res["kendall"], res["top10_in_global_top10pct"], res["transferred_best_percentile"]
    md = [f"# Seed transfer across prompts (builtin:digits, {args.seeds} seeds × 10 prompts)", "",
          f"{res['date']}, {res['machine']}; load: `{res['load']}`; `{res['command']}`; settings {s.as_dict()}", "",
          "| measure | mean | min | max |", "|---|---|---|---|",
          f"| Spearman ρ (45 prompt pairs) | {sp['mean']:.3f} | {sp['min']:.3f} | {sp['max']:.3f} |",
          f"| Kendall τ (45 prompt pairs) | {kd['mean']:.3f} | {kd['min']:.3f} | {kd['max']:.3f} |",
          f"| top-10 seeds in the others' top 10 % (chance 0.10) | {hit['mean']:.3f} | {min(hit['per_prompt']):.3f} | {max(hit['per_prompt']):.3f} |",
          f"| percentile of the others' best seed for this prompt | {pick['mean']:.3f} | {pick['min']:.3f} | {max(pick['per_prompt']):.3f} |",
          "", f"std of stability across seeds (per prompt) {res['stability_spread']['across_seeds_std']:.4f}, "
          f"across prompts (per seed) {res['stability_spread']['across_prompts_std']:.4f}."]  # fmt: skip
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
