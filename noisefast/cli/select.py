"""``noisefast select``: the most stable of many seeds (Algorithm 1), with best/worst images, a grid and a histogram.

Several prompts (``--prompts-file``) are scored together: their rows share UNet batches.
"""

from __future__ import annotations

import argparse

from noisefast.cli.args import (Command, add_model_arguments, add_output_arguments, add_prompt_arguments,
                                add_seed_arguments, add_settings_arguments, int_in)  # fmt: skip
from noisefast.cli.run import Run, fmt_prompt

MAX_GRID = 64  # samples per grid row: 2·64 decoded images at most


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_prompt_arguments(p)
    add_seed_arguments(p, default="0:100", help_="candidate seeds")
    add_settings_arguments(p)
    add_output_arguments(p)
    p.add_argument("--grid", type=int_in(0, MAX_GRID), metavar="K",
                   help=f"grid of the K most vs K least stable samples, K in [0, {MAX_GRID}], at most half the seeds "
                        f"(default: 8 for pixel models, 2 for SDXL; 0: no grid)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from noisefast.report import histogram_png, labeled_grid, save_png
    from noisefast.workflows import select_prompts

    run = Run("select", args)
    grid_k = args.grid if args.grid is not None else (8 if run.engine.kind == "pixel" else 2)
    with run.bar("select", "seeds") as bar:
        reports = select_prompts(run.engine, run.prompts, args.seeds, settings=run.settings,
                                 negative_prompt=args.negative_prompt, samples=max(grid_k, 1), progress=bar)  # fmt: skip
    lines = []
    for i, r in enumerate(reports):
        folder = run.folder(i, r.prompt)
        rec = {"prompt": r.prompt, "dir": run.rel(folder)} | r.as_dict()
        run.report["runs"].append(rec)
        sel = r.selection
        if sel is None:
            lines.append(f"prompt {fmt_prompt(r.prompt)}: interrupted before any seed was scored")
            continue
        hist = save_png(histogram_png(sel.scores.tolist(), best=sel.best_score, worst=sel.worst_score,
                                      title=f"stability of {len(sel.seeds)} candidates"), folder / "histogram.png")  # fmt: skip
        rec["images"] = {"histogram": run.rel(hist)}
        if not r.images:
            lines.append(f"prompt {fmt_prompt(r.prompt)}: interrupted after {rec['scored']}/{rec['requested']} seeds; "
                         f"best so far seed {sel.best_seed} ({sel.best_score:.4f})")  # fmt: skip
            continue
        top, bottom = r.images["top"], r.images["bottom"]
        best, worst = save_png(top[0], folder / "best.png"), save_png(bottom[-1], folder / "worst.png")
        rec["images"] |= {"best": run.rel(best), "worst": run.rel(worst)}
        k = len(top)
        if grid_k > 0 and len(top) + len(bottom) > 1:
            cap = lambda s: f"{s}: {sel.score_of(s):.4f}"  # noqa: E731
            low = list(sel.seeds[-len(bottom):])[::-1]  # worst first in the bottom row
            grid = labeled_grid([top, bottom[::-1]], [[cap(s) for s in sel.seeds[:k]], [cap(s) for s in low]],
                                [f"most stable {k} (seed: stability)", f"least stable {len(bottom)}"],
                                title=r.prompt[:80])  # fmt: skip
            rec["images"]["grid"] = run.rel(save_png(grid, folder / "grid.png"))
        run.save(complete=False)
        lines += [
            f"prompt {fmt_prompt(r.prompt)}: {rec['scored']} seeds scored in {r.seconds:.1f} s "
            f"({rec['timings']['seeds_per_s']} seeds/s)",
            f"  best  seed {sel.best_seed:<6} stability {sel.best_score:.4f}  -> {best}",
            f"  worst seed {sel.worst_seed:<6} stability {sel.worst_score:.4f}  -> {worst}",
            f"  {', '.join(f'{n} {folder / v}' for n, v in rec['images'].items() if n not in ('best', 'worst'))}",
        ]
    return run.finish(lines, interrupted=not all(r.complete and r.images for r in reports))


COMMAND = Command("pick the most stable of many seeds (Algorithm 1); writes best/worst images, a grid, a histogram",
                  add_arguments, run)  # fmt: skip
