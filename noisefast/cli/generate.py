"""``noisefast generate``: denoise each seed's noise with DDIM and write the images."""

from __future__ import annotations

import argparse

from noisefast.cli.args import Command, add_model_arguments, add_output_arguments, add_prompt_arguments, add_seed_arguments, add_settings_arguments
from noisefast.cli.run import Run, fmt_prompt


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_prompt_arguments(p)
    add_seed_arguments(p, default="0", help_="seeds to generate")
    add_settings_arguments(p)
    add_output_arguments(p)


def run(args: argparse.Namespace) -> int:
    from noisefast.report import save_png
    from noisefast.workflows import generate_seeds

    run = Run("generate", args)
    lines = []
    for i, prompt in enumerate(run.prompts):
        folder = run.folder(i, prompt)
        rec = {"prompt": prompt, "dir": run.rel(folder), "images": {}}
        run.report["runs"].append(rec)

        def write(seed, img, folder=folder, rec=rec):
            rec["images"][str(seed)] = run.rel(save_png(img, folder / f"seed-{seed}.png"))

        # the bar moves per denoising step (a pixel model's 64 images are one batch: per-image progress would jump)
        with run.bar(f"generate [{i + 1}/{len(run.prompts)}] {len(args.seeds)} image(s)", "steps") as bar:
            r = generate_seeds(run.engine, prompt, args.seeds, settings=run.settings,
                               negative_prompt=args.negative_prompt, step_progress=bar, on_image=write)  # fmt: skip
        rec |= r.as_dict()
        if not r.complete:
            return run.finish(lines + [f"prompt {fmt_prompt(prompt)}: interrupted after {len(r.seeds)} images"], True)
        run.save(complete=False)
        lines.append(f"prompt {fmt_prompt(prompt)}: {len(r.seeds)} images in {r.seconds:.1f} s -> {folder}/seed-*.png")
    return run.finish(lines)


COMMAND = Command("denoise each seed's noise with DDIM and write the images", add_arguments, run)
