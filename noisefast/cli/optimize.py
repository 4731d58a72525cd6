"""``noisefast optimize``: optimise each seed's noise for inversion stability (Algorithm 2).

Writes before/after images, the curve and the noises (``noise.safetensors``: initial, best, final), all
atomically; Ctrl-C at any point keeps what was reached, with a valid partial report (exit 130).
"""

from __future__ import annotations

import argparse

from noisefast.cli.args import (Command, add_model_arguments, add_optimize_arguments, add_output_arguments,
                                add_prompt_arguments, add_seed_arguments, add_settings_arguments, optimize_options)  # fmt: skip
from noisefast.cli.run import Run, fmt_prompt


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_prompt_arguments(p)
    add_seed_arguments(p, default="0", help_="seeds whose noise is optimised (each independently)")
    add_settings_arguments(p)
    add_output_arguments(p)
    add_optimize_arguments(p)


def run(args: argparse.Namespace) -> int:
    from noisefast.report import curve_png, save_images, save_png
    from noisefast.workflows import optimize_seeds

    from noisefast.params import OPTIMIZE

    run = Run("optimize", args)
    options = optimize_options(args)
    d = run.engine.defaults
    in_effect = {name: p.default if options[name] is None else options[name] for name, p in OPTIMIZE.items()}
    in_effect |= {"lr": d.optimize_lr if args.lr is None else args.lr,
                  "renorm": d.optimize_renorm if args.renorm is None else args.renorm}  # fmt: skip
    run.report["settings"] |= in_effect
    lines = []
    for i, prompt in enumerate(run.prompts):
        folder = run.folder(i, prompt)
        with run.bar(f"optimize [{i + 1}/{len(run.prompts)}]", "steps") as bar:
            r = optimize_seeds(run.engine, prompt, args.seeds, settings=run.settings, negative_prompt=args.negative_prompt,
                               progress=bar, **options)  # fmt: skip
        noise_file = folder / "noise.safetensors"
        r.optimization.save_noise(noise_file)
        rec = {"prompt": prompt, "dir": run.rel(folder)} | r.as_dict()
        rec["images"] = {"noise": run.rel(noise_file)}
        if r.optimization.history.numel():
            curve = save_png(curve_png(r.optimization.history.tolist(), title=f"stability per step: {prompt[:50]}"),
                             folder / "curve.png")  # fmt: skip
            rec["images"]["curve"] = run.rel(curve)
        one = len(args.seeds) == 1
        if r.images_before and r.images_after:
            names_b = ["before.png"] if one else [f"before-seed-{s}.png" for s in args.seeds]
            names_a = ["after.png"] if one else [f"after-seed-{s}.png" for s in args.seeds]
            save_images(r.images_before, folder, names_b)
            save_images(r.images_after, folder, names_a)
            rec["images"] |= {"before": [run.rel(folder / n) for n in names_b],
                              "after": [run.rel(folder / n) for n in names_a]}  # fmt: skip
        run.report["runs"].append(rec)
        run.save(complete=False)
        lines.append(f"prompt {fmt_prompt(prompt)}: {r.optimization.steps_run} steps in {r.seconds:.1f} s")
        if not r.complete:
            lines.append(f"  interrupted: the noise reached so far is in {noise_file}")
            return run.finish(lines, True)
        for s, b, a in zip(args.seeds, r.before, r.after):
            lines.append(f"  seed {s:<6} stability {b:.4f} -> {a:.4f} ({a - b:+.4f})")
        first = rec["images"].get("before", [""])[0]
        lines.append(f"  images {folder}/{first} -> {rec['images'].get('after', [''])[0]}, curve {folder / 'curve.png'}, "
                     f"noise {noise_file}")  # fmt: skip
    return run.finish(lines)


COMMAND = Command("optimise each seed's noise for inversion stability (Algorithm 2); writes before/after images and the curve",
                  add_arguments, run)  # fmt: skip
