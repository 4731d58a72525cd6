"""The model-driven subcommands of ``noisefast``: score, select, optimize, generate.

Each loads the model once, runs every prompt (``--prompt`` or ``--prompts-file``), writes its images
and ``report.json`` into ``--out`` (one sub-folder per prompt when there are several), and prints a short
summary (or the report as JSON with ``--json``). The report is rewritten after every prompt, so Ctrl-C
keeps what finished: the report then says ``"complete": false``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from noisefast.cli import (
    EXIT_INTERRUPTED,
    Command,
    Progress,
    add_model_arguments,
    add_output_arguments,
    add_prompt_arguments,
    add_seed_arguments,
    add_settings_arguments,
    finite_float,
    positive_int,
    progress_enabled,
    read_prompts,
    settings_overrides,
)


# --- shared run scaffolding ---------------------------------------------------------------------------------
class Run:
    """One command invocation: the engine, the output folder and the report being filled in."""

    def __init__(self, command: str, args: argparse.Namespace):
        from noisefast.pipeline import Engine
        from noisefast.report import versions

        self.t0 = time.perf_counter()
        self.args = args
        self.prompts = read_prompts(args)
        self.engine = Engine.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, backend=args.backend, variant=args.variant,
            family=args.family,
        )  # fmt: skip
        load_s = time.perf_counter() - self.t0
        self.threads = _set_threads(args.threads, self.engine)
        self.overrides = settings_overrides(args)
        self.settings = self.engine.settings(**self.overrides)  # validates sizes etc. before any work
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress_enabled(args)
        self.report = {
            "command": command,
            "argv": sys.argv[1:],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": self.engine.describe() | {"threads": self.threads},
            "settings": self.settings.as_dict() | {"negative_prompt": args.negative_prompt},
            "versions": versions(),
            "complete": False,
            "runs": [],
            "timings": {"load_s": round(load_s, 3)},
        }

    def folder(self, i: int, prompt: str) -> Path:
        """``out/`` for a single prompt, ``out/NNN-slug/`` for each of several."""
        if len(self.prompts) == 1:
            return self.out
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "prompt"
        d = self.out / f"{i:03d}-{slug}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.out))

    def save(self, complete: bool) -> Path:
        from noisefast.report import write_report

        self.report["complete"] = complete
        self.report["timings"]["total_s"] = round(time.perf_counter() - self.t0, 3)
        return write_report(self.out / "report.json", self.report)

    def finish(self, summary_lines: list[str], interrupted: bool = False) -> int:
        path = self.save(complete=not interrupted)
        if self.args.json:
            print(json.dumps(self.report, indent=2, default=str))
        else:
            d = self.report["model"]
            s = self.settings
            print(f"noisefast {self.report['command']} · {d['model']} ({d['family']}, {d['device']} {d['dtype']}) · "
                  f"DDIM {s.steps} steps + {s.inversion_steps} inversion steps, guidance {s.guidance_scale:g} "
                  f"(inversion {s.inversion_guidance_scale:g}), "
                  f"{s.width}×{s.height}")  # fmt: skip
            for line in summary_lines:
                print(line)
            print(f"report: {path}" + ("  (interrupted: partial results)" if interrupted else ""))
        return EXIT_INTERRUPTED if interrupted else 0


def _set_threads(threads: int | None, engine) -> int:
    """``--threads``, else 1 for a pixel model on CPU (measured: its 8×8 layers run ~10× slower with 2 threads
    on a busy 2-core machine, as the threads spin-wait); returns the count in effect."""
    import torch

    if threads is None and engine.kind == "pixel" and engine.device.type == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _fmt_prompt(p: str) -> str:
    return json.dumps(p if len(p) <= 60 else p[:57] + "...", ensure_ascii=False)


# --- select -------------------------------------------------------------------------------------------------
def _select_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_prompt_arguments(p)
    add_seed_arguments(p, default="0:100", help_="candidate seeds")
    add_settings_arguments(p)
    add_output_arguments(p)
    p.add_argument("--grid", type=int, metavar="K",
                   help="grid of the K most vs K least stable samples (default: 8 for pixel models, 2 for SDXL; 0: none)")  # fmt: skip


def _score_seeds(run: Run, i: int, prompt: str, label: str):
    """Algorithm 1 over ``--seeds`` for one prompt: (Selection or None, interrupted, seconds)."""
    from noisefast.stability import SelectionInterrupted

    bar = Progress(f"{label} [{i + 1}/{len(run.prompts)}]", "seeds", run.progress)
    t = time.perf_counter()
    try:
        sel, interrupted = run.engine.select(prompt, run.args.seeds, negative_prompt=run.args.negative_prompt,
                                             progress=bar, **run.overrides), False  # fmt: skip
    except SelectionInterrupted as e:
        sel, interrupted = e.result, True
    finally:
        bar.close()
    return sel, interrupted, time.perf_counter() - t


def _scores_record(sel, seeds: list[int], seconds: float) -> dict:
    """Seeds and scores in the order asked (finished ones only), best and worst, throughput."""
    by_seed = {s: float(v) for s, v in zip(sel.seeds, sel.scores)}
    done = [s for s in seeds if s in by_seed]
    return {
        "seeds": done,
        "scores": [by_seed[s] for s in done],
        "best_seed": sel.best_seed,
        "best_score": sel.best_score,
        "worst_seed": sel.worst_seed,
        "worst_score": sel.worst_score,
        "scored": len(done),
        "requested": len(seeds),
        "timings": {"score_s": round(seconds, 3), "seeds_per_s": round(len(done) / seconds, 3) if seconds > 0 else None},
    }


def _select(args: argparse.Namespace) -> int:
    from noisefast.report import histogram_png, labeled_grid

    run = Run("select", args)
    grid_k = args.grid if args.grid is not None else (8 if run.engine.kind == "pixel" else 2)
    lines = []
    for i, prompt in enumerate(run.prompts):
        folder = run.folder(i, prompt)
        sel, interrupted, secs = _score_seeds(run, i, prompt, "select")
        if sel is None:  # interrupted before the first chunk finished
            return run.finish(lines + [f"prompt {_fmt_prompt(prompt)}: interrupted before any seed was scored"], True)
        rec = {"prompt": prompt, "dir": run.rel(folder) if folder != run.out else ".", "complete": not interrupted}
        rec |= _scores_record(sel, args.seeds, secs)
        hist = folder / "histogram.png"
        histogram_png(sel.scores.tolist(), best=sel.best_score, worst=sel.worst_score,
                      title=f"stability of {len(sel.seeds)} candidates").save(hist)  # fmt: skip
        rec["images"] = {"histogram": run.rel(hist)}
        run.report["runs"].append(rec)
        if interrupted:
            lines.append(f"prompt {_fmt_prompt(prompt)}: interrupted after {rec['scored']}/{rec['requested']} seeds; "
                         f"best so far seed {sel.best_seed} ({sel.best_score:.4f})")  # fmt: skip
            return run.finish(lines, True)
        # the best and worst samples (and the grid of the K most vs K least stable)
        t = time.perf_counter()
        k = max(1, min(grid_k, len(sel.seeds) // 2))
        chosen = list(sel.seeds[:k]) + [s for s in sel.seeds[-k:] if s not in sel.seeds[:k]]
        gen = run.engine.generate(prompt, chosen, negative_prompt=args.negative_prompt, **run.overrides)
        best, worst = folder / "best.png", folder / "worst.png"
        gen.images[0].save(best)
        gen.images[-1].save(worst)
        rec["images"] |= {"best": run.rel(best), "worst": run.rel(worst)}
        if grid_k > 0 and len(chosen) > 1:
            top, bottom = gen.images[:k], gen.images[k:][::-1]  # worst first in the bottom row
            cap = lambda s: f"{s}: {sel.score_of(s):.4f}"  # noqa: E731
            grid = labeled_grid([top, bottom], [[cap(s) for s in chosen[:k]], [cap(s) for s in chosen[k:][::-1]]],
                                [f"most stable {len(top)} (seed: stability)", f"least stable {len(bottom)}"],
                                title=prompt[:80])  # fmt: skip
            grid.save(folder / "grid.png")
            rec["images"]["grid"] = run.rel(folder / "grid.png")
        rec["timings"]["generate_s"] = round(time.perf_counter() - t, 3)
        run.save(complete=False)
        lines += [
            f"prompt {_fmt_prompt(prompt)}: {rec['scored']} seeds scored in {secs:.1f} s ({rec['timings']['seeds_per_s']} seeds/s)",
            f"  best  seed {sel.best_seed:<6} stability {sel.best_score:.4f}  -> {best}",
            f"  worst seed {sel.worst_seed:<6} stability {sel.worst_score:.4f}  -> {worst}",
            f"  {', '.join(f'{n} {folder / v}' for n, v in rec['images'].items() if n not in ('best', 'worst'))}",
        ]
    return run.finish(lines)


SELECT = Command("pick the most stable of many seeds (Algorithm 1); writes best/worst images, a grid, a histogram",
                 _select_arguments, _select)  # fmt: skip


# --- score --------------------------------------------------------------------------------------------------
def _score_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_prompt_arguments(p)
    add_seed_arguments(p, default="0:10", help_="seeds to score")
    add_settings_arguments(p)
    add_output_arguments(p, images=False)


def _score(args: argparse.Namespace) -> int:
    run = Run("score", args)
    lines = []
    for i, prompt in enumerate(run.prompts):
        sel, interrupted, secs = _score_seeds(run, i, prompt, "score")
        if sel is None:
            return run.finish(lines + [f"prompt {_fmt_prompt(prompt)}: interrupted before any seed was scored"], True)
        rec = {"prompt": prompt, "complete": not interrupted} | _scores_record(sel, args.seeds, secs)
        run.report["runs"].append(rec)
        shown = list(zip(rec["seeds"], rec["scores"]))
        lines.append(f"prompt {_fmt_prompt(prompt)}: {rec['scored']} seeds in {secs:.1f} s")
        lines += [f"  seed {s:<8} {v:.6f}" for s, v in shown[:20]]
        if len(shown) > 20:
            lines.append(f"  ... ({len(shown) - 20} more in the report)")
        lines.append(f"  best seed {rec['best_seed']} ({rec['best_score']:.6f}), worst seed {rec['worst_seed']} "
                     f"({rec['worst_score']:.6f})")  # fmt: skip
        if interrupted:
            return run.finish(lines, True)
        run.save(complete=False)
    return run.finish(lines)


SCORE = Command("inversion stability s(ε) = cos(ε, I(D(ε))) of each seed's noise (Definition 1)",
                _score_arguments, _score)  # fmt: skip


# --- generate -----------------------------------------------------------------------------------------------
def _generate_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_prompt_arguments(p)
    add_seed_arguments(p, default="0", help_="seeds to generate")
    add_settings_arguments(p)
    add_output_arguments(p)


def _generate(args: argparse.Namespace) -> int:
    run = Run("generate", args)
    lines = []
    for i, prompt in enumerate(run.prompts):
        folder = run.folder(i, prompt)
        bar = Progress(f"generate [{i + 1}/{len(run.prompts)}]", "images", run.progress)
        t, rec = time.perf_counter(), {"prompt": prompt, "dir": run.rel(folder) if folder != run.out else ".",
                                       "seeds": [], "images": {}}  # fmt: skip
        run.report["runs"].append(rec)
        step = run.settings.batch_size or 8
        try:
            for lo in range(0, len(args.seeds), step):
                chunk = args.seeds[lo : lo + step]
                gen = run.engine.generate(prompt, chunk, negative_prompt=args.negative_prompt, **run.overrides)
                for seed, img in zip(chunk, gen.images):
                    img.save(folder / f"seed-{seed}.png")
                    rec["seeds"].append(seed)
                    rec["images"][str(seed)] = run.rel(folder / f"seed-{seed}.png")
                bar(len(rec["seeds"]), len(args.seeds))
        except KeyboardInterrupt:
            bar.close()
            rec["complete"] = False
            return run.finish(lines + [f"prompt {_fmt_prompt(prompt)}: interrupted after {len(rec['seeds'])} images"], True)
        bar.close()
        rec["complete"] = True
        rec["timings"] = {"generate_s": round(time.perf_counter() - t, 3)}
        run.save(complete=False)
        lines.append(f"prompt {_fmt_prompt(prompt)}: {len(rec['seeds'])} images in {rec['timings']['generate_s']:.1f} s -> {folder}/seed-*.png")
    return run.finish(lines)


GENERATE = Command("denoise each seed's noise with DDIM and write the images", _generate_arguments, _generate)


# --- optimize -----------------------------------------------------------------------------------------------
def _optimize_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_prompt_arguments(p)
    add_seed_arguments(p, default="0", help_="seeds whose noise is optimised (each independently)")
    add_settings_arguments(p)
    add_output_arguments(p)
    g = p.add_argument_group("optimisation (Algorithm 2)")
    g.add_argument("--iterations", type=positive_int, default=100, help="gradient steps (default: 100)")
    g.add_argument("--lr", type=finite_float, default=None, help="learning rate (default: the model's; 100, the paper's, for SDXL)")
    g.add_argument("--momentum", type=finite_float, default=0.5, help="momentum in [0, 1) (default: 0.5)")
    g.add_argument("--target", type=finite_float, help="stop a sample once its stability reaches this")
    g.add_argument("--renorm", action=argparse.BooleanOptionalAction, default=None,
                   help="after each step put the noise back on the Gaussian shell ‖ε‖ = √D (keeps it a plausible noise; "
                        "default: the model's — off for SDXL as in the paper, on for builtin:digits)")  # fmt: skip


def _optimize(args: argparse.Namespace) -> int:
    from noisefast.report import curve_png, save_images

    run = Run("optimize", args)
    d = run.engine.defaults
    args.lr = d.optimize_lr if args.lr is None else args.lr
    args.renorm = d.optimize_renorm if args.renorm is None else args.renorm
    run.report["settings"] |= {"iterations": args.iterations, "lr": args.lr, "momentum": args.momentum,
                               "target": args.target, "renorm": args.renorm}  # fmt: skip
    lines = []
    for i, prompt in enumerate(run.prompts):
        folder = run.folder(i, prompt)
        bar = Progress(f"optimize [{i + 1}/{len(run.prompts)}]", "steps", run.progress)
        t = time.perf_counter()
        try:
            res = run.engine.optimize(prompt, args.seeds, negative_prompt=args.negative_prompt, iterations=args.iterations,
                                      lr=args.lr, momentum=args.momentum, target=args.target, renorm=args.renorm, progress=bar,
                                      **run.overrides)  # fmt: skip
        finally:
            bar.close()
        opt_s = time.perf_counter() - t
        # 1. stability before and after, measured afresh (not taken from the optimiser's own history)
        before = run.engine.score(prompt, noise=res.initial_noise, negative_prompt=args.negative_prompt, **run.overrides)
        after = run.engine.score(prompt, noise=res.best_noise, negative_prompt=args.negative_prompt, **run.overrides)
        # 2. images from the initial and the optimised noise, the curve, the noises themselves
        imgs_before = run.engine.generate(prompt, noise=res.initial_noise, negative_prompt=args.negative_prompt, **run.overrides).images
        imgs_after = run.engine.generate(prompt, noise=res.best_noise, negative_prompt=args.negative_prompt, **run.overrides).images
        one = len(args.seeds) == 1
        names_b = ["before.png"] if one else [f"before-seed-{s}.png" for s in args.seeds]
        names_a = ["after.png"] if one else [f"after-seed-{s}.png" for s in args.seeds]
        save_images(imgs_before, folder, names_b)
        save_images(imgs_after, folder, names_a)
        curve_png(res.history.tolist(), title=f"stability per step: {prompt[:50]}").save(folder / "curve.png")
        noise_file = folder / "noise.safetensors"
        res.save_noise(noise_file)
        rec = {
            "prompt": prompt,
            "dir": run.rel(folder) if folder != run.out else ".",
            "seeds": list(args.seeds),
            "stability_before": before.tolist(),
            "stability_after": after.tolist(),
            "history": res.history.tolist(),  # [steps + 1, B]: the optimiser's stability per step
            "steps_run": res.steps_run,
            "complete": not res.interrupted,
            "images": {"before": [run.rel(folder / n) for n in names_b], "after": [run.rel(folder / n) for n in names_a],
                       "curve": run.rel(folder / "curve.png"), "noise": run.rel(noise_file)},  # fmt: skip
            "timings": {"optimize_s": round(opt_s, 3), "s_per_step": round(opt_s / max(res.steps_run, 1), 4)},
        }
        run.report["runs"].append(rec)
        run.save(complete=False)
        lines.append(f"prompt {_fmt_prompt(prompt)}: {res.steps_run} steps in {opt_s:.1f} s")
        for s, b, a in zip(args.seeds, rec["stability_before"], rec["stability_after"]):
            lines.append(f"  seed {s:<6} stability {b:.4f} -> {a:.4f} ({a - b:+.4f})")
        lines.append(f"  images {folder}/{names_b[0]} -> {names_a[0]}, curve {folder / 'curve.png'}, noise {noise_file}")
        if res.interrupted:
            return run.finish(lines, True)
    return run.finish(lines)


OPTIMIZE = Command("optimise each seed's noise for inversion stability (Algorithm 2); writes before/after images and the curve",
                   _optimize_arguments, _optimize)  # fmt: skip


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    from noisefast.denoisers.onnx_export import add_export_arguments

    add_export_arguments(parser)


def _export(args: argparse.Namespace) -> int:
    from noisefast.denoisers.onnx_export import run_export
    from noisefast.loading import resolve_folder

    args.model = str(resolve_folder(args.model))  # builtin:NAME, a folder, or a hub id (cache first)
    run_export(args)
    return 0


EXPORT = Command("export a model's UNet to ONNX (for --backend onnxruntime / tensorrt)", _export_arguments, _export)
