"""``noisefast screen``: many prompts × many seeds → ``OUT/scores/*.parquet``, resumable, in process or on Ray.

    noisefast screen --prompts prompts.txt --seeds 0:1000 --out runs/fox
    noisefast screen --prompts prompts.jsonl --seeds 0:1000 --out runs/fox --proxy-steps 2 --rescore-top 50
    noisefast screen --prompts prompts.csv --seeds 0:1000 --out runs/fox --ray            # local Ray
    noisefast screen --summary runs/fox                                                  # per-seed statistics
"""

from __future__ import annotations

import argparse
import sys

from noisefast.cli.args import (Command, add_model_arguments, add_seed_arguments, add_settings_arguments, int_in,
                                out_path, positive_int, settings_overrides)  # fmt: skip
from noisefast.cli.run import EXIT_INTERRUPTED, EXIT_OK


def add_arguments(p: argparse.ArgumentParser) -> None:
    from noisefast.defaults import DEFAULT_SHARD_SIZE

    add_model_arguments(p)
    g = p.add_argument_group("screen")
    g.add_argument("--prompts", metavar="FILE",
                   help=".txt (one per line), .jsonl ({\"prompt\", \"id\"?, \"negative_prompt\"?}), .csv or .parquet "
                        "(a prompt column); duplicates are screened once")  # fmt: skip
    g.add_argument("--negative-prompt", help="negative prompt for the prompts that give none (used where guidance > 1)")
    add_seed_arguments(p, default="0:1000", help_="seeds to screen under every prompt")
    g.add_argument("--out", metavar="DIR", type=out_path, help="result folder: manifest.json, scores/*.parquet, summary.{json,md}")
    g.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE,
                   help=f"rows per shard, the unit written atomically and resumed (default: {DEFAULT_SHARD_SIZE})")
    g.add_argument("--proxy-steps", type=int_in(1, 1000), metavar="N",
                   help="cascade: score every seed on an N+N-step schedule first (written to OUT/proxy/)")
    g.add_argument("--rescore-top", type=positive_int, metavar="M",
                   help="cascade: rescore each prompt's M best proxy seeds at the full schedule (OUT/scores/)")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="score the shards on Ray: a local instance, or the cluster at ADDRESS (needs noisefast[ray])")
    g.add_argument("--ray-workers", type=positive_int, metavar="N",
                   help="Ray actors (default: one per GPU, else one per --threads CPUs)")
    g.add_argument("--top-k", type=int_in(1, 10_000), default=5, help="seeds per prompt in the summary (default: 5)")
    g.add_argument("--force", action="store_true", help="delete OUT's earlier screening results and start over")
    g.add_argument("--summary", metavar="OUT", type=out_path,
                   help="print per-seed statistics across prompts of a finished OUT and write OUT/seed_stats.csv "
                        "(nothing is scored); an unfinished OUT is refused, naming what is missing")  # fmt: skip
    g.add_argument("--partial", action="store_true",
                   help="with --summary: rank an unfinished OUT's finished shards anyway (the output says so)")
    g.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr: rows/s and ETA (default: when stderr is a terminal)")
    add_settings_arguments(p)


def run(args: argparse.Namespace) -> int:
    from noisefast.atomic import dumps_json
    from noisefast.config import EngineConfig
    from noisefast.errors import InputError
    from noisefast.progress import stderr_is_terminal
    from noisefast.screen import ScreenInterrupted, screen
    from noisefast.screen.summary import print_seed_stats

    if args.summary is not None:
        print(print_seed_stats(args.summary, partial=args.partial))
        return EXIT_OK
    if args.partial:
        raise InputError("--partial goes with --summary OUT (a screening run always finishes every shard)")
    if not args.prompts or not args.out:
        raise InputError("--prompts FILE and --out DIR are required (or --summary OUT)")
    from noisefast.screen.prompts_io import read_prompt_file

    prompts = read_prompt_file(args.prompts)  # a bad file fails before the model loads
    if args.ray is not None:
        from noisefast.screen.ray_runner import import_ray

        import_ray()  # without Ray: one line, before anything loads
    try:
        res = screen(prompts, args.seeds, args.out, config=EngineConfig.from_cli_args(args),
                     negative_prompt=args.negative_prompt, shard_size=args.shard_size, proxy_steps=args.proxy_steps,
                     rescore_top=args.rescore_top, top_k=args.top_k, force=args.force, ray=args.ray,
                     ray_workers=args.ray_workers, progress=args.progress if args.progress is not None else
                     stderr_is_terminal(), argv=sys.argv[1:], **settings_overrides(args))  # fmt: skip
    except ScreenInterrupted as e:
        print(f"noisefast screen: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(dumps_json(res.summary))
        return EXIT_OK
    s, t = res.summary, res.summary["timings"]
    st = s["settings"]
    print(f"noisefast screen · {s['model']} · {st['steps']} + {st['inversion_steps']} steps, guidance "
          f"{st['guidance_scale']:g} (inversion {st['inversion_guidance_scale']:g}), {st['width']}×{st['height']}"
          + (f" · cascade {s['cascade']['proxy_steps']}+{s['cascade']['proxy_steps']} → top {s['cascade']['rescore_top']}"
             if s.get("cascade") else ""))  # fmt: skip
    print(f"{s['prompts']} prompts, {s['rows']} rows in {res.out / 'scores'}; this run: {t['rows_scored']} rows in "
          f"{t['score_s']} s ({t['rows_per_s']} rows/s, {s['executor']}, {s['workers']} worker(s)), "
          f"{t['shards_skipped']}/{t['shards_total']} shards already done")  # fmt: skip
    for p in s["per_prompt"][:10]:
        best = p["top"][0] if p["top"] else None
        print(f"  {p['prompt'][:50]!r:54} best seed {best['seed'] if best else '-':<8} "
              f"{best['stability'] if best else float('nan'):.4f}")
    if len(s["per_prompt"]) > 10:
        print(f"  … {len(s['per_prompt']) - 10} more prompts")
    print(f"summary: {res.out / 'summary.md'}  (per-seed statistics: noisefast screen --summary {res.out})")
    return EXIT_OK


COMMAND = Command("screen many prompts × many seeds into a resumable Parquet dataset (in process or on Ray)",
                  add_arguments, run)  # fmt: skip
