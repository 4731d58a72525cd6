"""Runs ``noisefast bench SUBCOMMAND`` from its parsed options (`noisefast.cli.bench` parses): resolves the defaults
(``--quick``, the device's, the architecture's), builds the Engine from the `EngineConfig`, measures into one
`noisefast.bench.schema.Run`, writes its JSON and Markdown and prints the Markdown.

Exit status: 0; 1 when a part failed (recorded in the result's ``errors``; the others ran); 2 bad input; 3
(``compare --check``) a regression; 130 interrupted — what was measured is still written.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

from noisefast.bench import schema
from noisefast.config import EngineConfig, FastPathOptions
from noisefast.errors import InputError
from noisefast.params import SETTINGS

EXIT_PART_FAILED, EXIT_REGRESSION, EXIT_INTERRUPTED = 1, 3, 130
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def _pick(value, quick: bool, quick_default, default):
    """An option's value: given, else the --quick default, else the default."""
    return value if value is not None else (quick_default if quick else default)


def _settings_flags(args) -> dict:
    return {n: getattr(args, n) for n in SETTINGS if n != "batch_size" and getattr(args, n, None) is not None}


def _given_engine_flags(args) -> list[str]:
    """The engine options given on the command line (those not at `EngineConfig.add_cli_args`' defaults)."""
    p = argparse.ArgumentParser()
    EngineConfig.add_cli_args(p)
    dests = [a.dest for a in p._actions if a.dest != "help"]
    return [d for d in dests if getattr(args, d, None) != p.get_default(d)]


def _config(args) -> EngineConfig:
    from noisefast.bench.models import arch_of, default_model

    if args.model is None:
        args.model = default_model(args.device)
    config = EngineConfig.from_cli_args(args)
    arch_of(config)  # refuses an unknown arch:NAME
    return config


_CURRENT: dict = {}  # the run being measured (what an interrupt still writes)


def _run(sub: str, args, device, options: dict, rounds: int, warmup: int, statistic: str | None = None,
         method: str | None = None) -> schema.Run:
    from noisefast.bench.timing import method_for, statistic_for

    _CURRENT["run"] = schema.Run(sub, options, device=str(device), statistic=statistic or statistic_for(device),
                                 method=method or method_for(device), warmup=warmup, rounds=rounds,
                                 busy_threshold=args.busy_load)  # fmt: skip
    return _CURRENT["run"]


def _set_engine(run: schema.Run, engine, config) -> None:
    import torch

    from noisefast.bench.models import engine_record

    run.result["engine"] = engine_record(engine, config)
    run.result["machine"]["torch_threads"] = torch.get_num_threads()
    run.monitor.own_threads = torch.get_num_threads()


def _prompt(args, engine) -> str:
    return args.prompt or ("a handwritten digit seven" if engine.kind == "pixel" else "a red fox in the snow")


def _finish(run: schema.Run, args) -> int:
    from noisefast.bench.tables import render

    result = run.finish()
    md = render(result)
    json_path, md_path = args.json, args.md
    if json_path is None and md_path is None:  # neither asked for: both, named by subcommand and time
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        json_path, n = f"noisefast-bench-{result['subcommand']}-{stamp}.json", 1
        while Path(json_path).exists():  # two runs within a second
            n += 1
            json_path = f"noisefast-bench-{result['subcommand']}-{stamp}-{n}.json"
        md_path = str(Path(json_path).with_suffix(".md"))
    schema.write(result, json_path, md_path, md)
    print(md, end="")
    print(f"noisefast bench: wrote {', '.join(p for p in (json_path, md_path) if p)}", file=sys.stderr)
    if result["errors"]:
        print(f"noisefast bench: {len(result['errors'])} part(s) failed: {', '.join(result['errors'])} (the "
              f"result's 'errors' has each message)", file=sys.stderr)  # fmt: skip
    return EXIT_PART_FAILED if result["errors"] else 0


def kernels(args) -> schema.Run:
    import torch

    from noisefast.bench import kernels as k
    from noisefast.loading import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [DTYPES[d] for d in (args.dtype or (["fp16", "bf16", "fp32"] if cuda else ["fp32"]))]
    shapes = args.shape or (k.SHAPES[:1] if args.quick else k.SHAPES)
    cases = args.cases or list(k.CASES)
    rounds = args.rounds or ((20 if args.quick else 100) if cuda else (10 if args.quick else 40))
    options = {"device": str(device), "dtypes": dtypes, "shapes": [list(s) for s in shapes], "cases": cases,
               "threads": torch.get_num_threads(), "quick": args.quick}  # fmt: skip
    run = _run("kernels", args, device, options, rounds, args.warmup)
    run.monitor.own_threads = torch.get_num_threads()
    k.measure(run, device=str(device), dtypes=dtypes, shapes=shapes, cases=cases, rounds=rounds, warmup=args.warmup)
    return run


def variant_configs(config: EngineConfig, names) -> dict[str, EngineConfig]:
    """``--variants``: a backend name, ``fast`` (the GPU fast path, fp16) or ``plain`` (no fast path)."""
    out = {}
    for name in names:
        if name == "fast":
            vc = config.replace(fast_path=FastPathOptions.turbo())
        elif name == "plain":
            vc = config.replace(fast_path=None)
        else:
            vc = config.replace(backend=name)
        if vc == config:
            raise InputError(f"--variants {name}: that is the engine measured already (its row is 'noisefast')")
        out[name] = vc
    return out


def scoring(args, workdir) -> schema.Run:
    from noisefast.bench import scoring as sc
    from noisefast.bench.matrix import run_matrix
    from noisefast.bench.models import ARCH_SETTINGS, arch_of, open_engine, plain_model, variant_engine
    from noisefast.bench.ways import THROUGH, USERS

    config = _config(args)
    arch = arch_of(config)
    users = args.users or (["per-seed", "batched"] if args.quick or args.matrix else list(USERS))
    # default rows beside the engine measured: the fast path in the GPU matrix; eager torch where the engine runs
    # another backend (e.g. auto), so its gain over the plain forward is in the same rounds
    default = ["fast"] if args.matrix else ["torch"] if config.backend != "torch" else []
    variants = variant_configs(config, args.variants or default)
    rounds = _pick(args.rounds, args.quick, 2, 3)
    flags = _settings_flags(args)
    options = {"model": config.model, "users": users, "through": args.through, "variants": list(variants),
               "matrix": args.matrix, "budget_s": args.budget_s if args.matrix else None, "quick": args.quick,
               "settings_flags": flags, "engine_config": config.as_dict()}  # fmt: skip
    from noisefast.loading import resolve_device

    run = _run("scoring", args, resolve_device(config.device), options, rounds, 1)
    if args.matrix:  # each configuration opens its own engine
        run_matrix(run, config, variants, prompt=args.prompt or "a red fox in the snow", users=users,
                   through=args.through or ["unet"], rounds=rounds, budget_s=args.budget_s, workdir=workdir,
                   settings_overrides=flags, on_engine=lambda e, c: _set_engine(run, e, c))  # fmt: skip
        return run
    engine = open_engine(config, workdir)
    _set_engine(run, engine, config)
    prompt = _prompt(args, engine)
    plain = plain_model(engine, config, workdir)
    through = args.through or [t for t in THROUGH if t != "pipeline" or plain.pipe is not None]
    if "pipeline" in through and plain.pipe is None:
        raise InputError(f"--through pipeline: {config.model} has no diffusers pipeline (a {engine.kind} model); "
                         f"use --through unet")  # fmt: skip
    quick_steps = {"steps": 1, "inversion_steps": 1} if args.quick else {}
    s = engine.settings(**{**(ARCH_SETTINGS.get(arch) or {}), **quick_steps, **flags})
    seeds = args.seeds or list(range(4 if args.quick else 8))
    run.result["options"] |= {"through": through, "prompt": prompt, "seeds": seeds,
                              "settings": s.as_dict() | {"batch_size": engine.batch_size_for(s)}}
    var = {name: variant_engine(engine, config, vc, workdir) for name, vc in variants.items()}
    res = sc.measure(run, engine, plain, var, prompt=prompt, seeds=seeds, s=s, users=users, through=through,
                     rounds=rounds)  # fmt: skip
    run.results.update(res or {})
    _set_engine(run, engine, config)  # again: what the warm-up decided (e.g. an automatic backend's choices)
    return run


def optimize(args, workdir) -> schema.Run:
    from noisefast.bench import optimize as op
    from noisefast.bench.models import arch_of, open_engine

    config = _config(args)
    arch = arch_of(config)
    from noisefast.loading import resolve_device

    device = resolve_device(config.device)
    steps = args.chain_steps or ([2] if args.quick else [4, 10] if arch == "tiny" else [1])
    iters, repeats = _pick(args.iters, args.quick, 2, 3), _pick(args.rounds, args.quick, 1, 2)
    extras = args.extras if args.extras is not None else device.type != "cuda"
    flags = _settings_flags(args)
    arch_defaults = {"tiny": dict(height=64 if args.quick else 128, width=64 if args.quick else 128,
                                  guidance_scale=0.0),
                     "sdxl": dict(height=512, width=512, guidance_scale=0.0), "sdxl-turbo": dict(height=512, width=512,
                                                                                                 guidance_scale=0.0)}
    options = {"model": config.model, "steps": steps, "iters": iters, "warmup": args.warmup, "extras": extras,
               "quick": args.quick, "settings_flags": flags, "engine_config": config.as_dict()}  # fmt: skip
    run = _run("optimize", args, device, options, repeats, args.warmup)
    engine = open_engine(config, workdir)
    _set_engine(run, engine, config)
    s = engine.settings(**{**arch_defaults.get(arch, {}), **flags})
    seeds = args.seeds or [0]
    run.result["options"] |= {"prompt": _prompt(args, engine), "seeds": seeds, "settings": s.as_dict()}
    op.measure(run, engine, prompt=_prompt(args, engine), seeds=seeds, s=s, steps_list=steps, warmup=args.warmup,
               iters=iters, repeats=repeats, extras=extras)  # fmt: skip
    _set_engine(run, engine, config)
    return run


def unet(args, workdir) -> schema.Run:
    from noisefast.bench import unet as un
    from noisefast.bench.models import arch_of, open_engine, unet_dtype, variant_engine

    config = _config(args)
    arch = arch_of(config)
    from noisefast.loading import resolve_device

    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    iters = args.rounds or ((5 if args.quick else 10) if cuda else (3 if args.quick else 20))
    run = _run("unet", args, device, {}, iters, 1)
    engine = open_engine(config, workdir)
    _set_engine(run, engine, config)
    sdxl = un.is_sdxl_unet(engine.model.unet.config)
    res = args.resolutions or ([128, 256] if arch == "tiny" else [512, 1024] if sdxl else [engine.settings().height])
    res = res[:1] if args.quick and not args.resolutions else res
    batches = args.batches or ([1, 8, 32] if cuda else [1, 8])
    backends = args.backends or [config.backend]
    n = args.matmul_n or (8192 if cuda else (1024 if args.quick else 2048))
    run.result["options"] = {"model": config.model, "backends": backends, "resolutions": res, "batches": batches,
                             "iters": iters, "budget_s": args.budget_s, "matmul_n": n, "quick": args.quick,
                             "engine_config": config.as_dict()}  # fmt: skip
    dens = {b: engine.den if b == config.backend else variant_engine(engine, config, config.replace(backend=b),
                                                                     workdir).den for b in backends}  # fmt: skip
    with run.part("matmul peak"):
        run.results["matmul_peak"] = un.matmul_peak(run, device, unet_dtype(engine), n,
                                                    20 if cuda else (5 if args.quick else 10))  # fmt: skip
    if "matmul_peak" not in run.results:
        return run
    s = engine.settings()
    cond = engine.condition(_prompt(args, engine), settings=s).positive()
    with run.part("UNet calls"):
        un.unet_calls(run, engine, dens, cond, resolutions=res, batches=batches, iters=iters,
                      peak_tflops=run.results["matmul_peak"]["tflops"], budget_s=args.budget_s)  # fmt: skip
    _set_engine(run, engine, config)
    return run


def serve(args) -> schema.Run:
    from noisefast.bench import serve as sv

    given = _given_engine_flags(args)
    if args.url and given:
        raise InputError(f"--url measures a running server, whose engine options are its own (GET /v1/info); "
                         f"drop {', '.join('--' + d.replace('_', '-') for d in given)}")  # fmt: skip
    k = _pick(args.seeds_per_request, args.quick, 4, 32)
    levels = _pick(args.concurrency, args.quick, [1, 2], [1, 8, 64])
    opts = dict(endpoint=args.endpoint, k=k, settings=_settings_flags(args), prompt=args.prompt,
                duration=_pick(args.duration, args.quick, 2.0, 60.0), max_warmup=_pick(args.max_warmup, args.quick,
                30.0, 120.0), max_requests=_pick(args.max_requests, args.quick, 40, 100_000))  # fmt: skip
    key = args.api_key or os.environ.get("NOISEFAST_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    options = {**opts, "levels": levels, "url": args.url, "quick": args.quick}
    run = _run("serve", args, "cpu", options, 1, 0, statistic="median",
               method="client-side wall-clock latency of each request answered in the window; percentiles and rates "
                      "over the window")  # fmt: skip
    proc, url = None, args.url
    try:
        if url is None:
            config = EngineConfig.from_cli_args(args)
            run.result["options"]["engine_config"] = config.as_dict()
            server = ["--max-wait-ms", str(args.max_wait_ms), "--max-queue", "1000000", "--timeout", "3600",
                      "--max-seeds", str(max(1024, k)), "--max-cost", str(2**62)]  # a load test, not a cost limit  # fmt: skip
            with run.part("start the server"):
                proc, url = sv.start_server(config, server, timeout_s=args.server_timeout)
            if proc is None:
                return run
        info = sv.server_info(url.rstrip("/"), headers)
        run.result["engine"] = (info or {}).get("engine")
        run.results["url"] = url.rstrip("/")
        run.results["server"] = {k: v for k, v in (info or {}).items() if k != "engine"}
        sv.measure(run, url.rstrip("/"), levels=levels, headers=headers, **opts)
    finally:
        if proc is not None:
            sv.stop_server(proc)
    return run


def screen(args, workdir) -> schema.Run:
    from noisefast.bench import screen as scr
    from noisefast.bench.models import open_engine
    from noisefast.loading import resolve_device

    config = EngineConfig.from_cli_args(args)
    rounds = args.rounds or 1
    prompts = scr.digit_prompts(_pick(args.prompts, args.quick, 3, 20))
    seeds = args.seeds or list(range(8 if args.quick else 200))
    run = _run("screen", args, resolve_device(config.device), {}, rounds, 1)
    engine = open_engine(config, workdir)
    _set_engine(run, engine, config)
    s = engine.settings(**_settings_flags(args))
    run.result["options"] = {"model": config.model, "prompts": len(prompts), "seeds": len(seeds), "ray": args.ray,
                             "ray_workers": args.ray_workers, "quick": args.quick, "settings": s.as_dict(),
                             "engine_config": config.as_dict()}  # fmt: skip
    scr.measure(run, engine, config, prompts=prompts, seeds=seeds, s=s, rounds=rounds, ray=args.ray,
                ray_workers=args.ray_workers, threads=engine.threads)  # fmt: skip
    return run


def compare(args) -> int:
    from noisefast.bench.compare import compare as cmp, markdown

    c = cmp(schema.load(args.a), schema.load(args.b), threshold_pct=args.threshold)
    md = markdown(c)
    schema.write(c, args.json, args.md, md)
    print(md, end="")
    return EXIT_REGRESSION if args.check and c["regressions"] else 0


def show(args) -> int:
    from noisefast.bench.tables import render

    md = render(schema.load(args.result))
    schema.write({}, None, args.md, md)
    print(md, end="")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.bench == "compare":
        return compare(args)
    if args.bench == "show":
        return show(args)
    _CURRENT.clear()
    with tempfile.TemporaryDirectory(prefix="noisefast-bench-") as workdir:
        runner = {"kernels": lambda: kernels(args), "scoring": lambda: scoring(args, workdir),
                  "optimize": lambda: optimize(args, workdir), "unet": lambda: unet(args, workdir),
                  "serve": lambda: serve(args), "screen": lambda: screen(args, workdir)}
        try:
            measured = runner[args.bench]()
        except KeyboardInterrupt:  # Ctrl-C or a time limit's SIGINT: keep what was measured
            measured = _CURRENT.get("run")
            if measured is None:
                raise
            measured.result["errors"]["interrupted"] = "KeyboardInterrupt: the run stopped here"
            _finish(measured, args)
            return EXIT_INTERRUPTED
        return _finish(measured, args)
