"""``noisefast score``: inversion stability s(ε) = cos(ε, I(D(ε))) of each seed's noise (Definition 1)."""

from __future__ import annotations

import argparse

from noisefast.cli.args import Command, add_model_arguments, add_output_arguments, add_prompt_arguments, add_seed_arguments, add_settings_arguments
from noisefast.cli.run import Run, fmt_prompt


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_prompt_arguments(p)
    add_seed_arguments(p, default="0:10", help_="seeds to score")
    add_settings_arguments(p)
    add_output_arguments(p, images=False)


def run(args: argparse.Namespace) -> int:
    from noisefast.workflows import score_prompts

    run = Run("score", args)
    with run.bar("score", "seeds") as bar:
        reports = score_prompts(run.engine, run.prompts, args.seeds, settings=run.settings,
                                negative_prompt=args.negative_prompt, progress=bar)  # fmt: skip
    lines = []
    for r in reports:
        rec = r.as_dict()
        run.report["runs"].append(rec)
        shown = list(zip(rec["seeds"], rec["scores"]))
        lines.append(f"prompt {fmt_prompt(r.prompt)}: {rec['scored']}/{rec['requested']} seeds in {r.seconds:.1f} s")
        lines += [f"  seed {s:<8} {v:.6f}" for s, v in shown[:20]]
        if len(shown) > 20:
            lines.append(f"  ... ({len(shown) - 20} more in the report)")
        if rec["scored"]:
            lines.append(f"  best seed {rec['best_seed']} ({rec['best_score']:.6f}), worst seed {rec['worst_seed']} "
                         f"({rec['worst_score']:.6f})")  # fmt: skip
    return run.finish(lines, interrupted=not all(r.complete for r in reports))


COMMAND = Command("inversion stability s(ε) = cos(ε, I(D(ε))) of each seed's noise (Definition 1)", add_arguments, run)
