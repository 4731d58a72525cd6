"""``noisefast bench``: the side-by-side measurements, as an installed command (after ``vllm bench``).

    noisefast bench kernels [--device cuda] [--dtype fp16 ...]               fused ops vs eager torch, % of copy GB/s
    noisefast bench scoring [--model M] [--variants auto,fast]            noisefast vs the diffusers users
    noisefast bench optimize [--steps 4 10]                                  Algorithm 2: s/iteration, memory
    noisefast bench unet [--backends torch,compile,onnxruntime]              UNet calls vs the matmul peak
    noisefast bench serve [--url http://127.0.0.1:8000]                      closed-loop load on a server
    noisefast bench screen [--ray]                                           screening rows/s
    noisefast bench compare A.json B.json                                    two runs side by side
    noisefast bench show RESULT.json                                         a saved result's Markdown again

Every measuring subcommand takes the engine options every other door takes (one `EngineConfig`; ``--model`` default:
a built-in random-weight architecture, ``arch:tiny`` on a CPU, ``arch:sdxl-turbo`` on CUDA — `noisefast.bench.models`),
writes one result in the versioned schema (``--json``) and its Markdown (``--md``; also printed), and records the
machine, the versions, the engine configuration in effect, every sample and the load average. ``--quick``: small
sizes and few rounds (seconds on a CPU; what the tests run). This module only parses (no torch: ``--help`` is fast);
`noisefast.bench.commands` runs.
"""

from __future__ import annotations

import argparse

from noisefast.cli.args import Command, add_model_arguments, float_in, int_in, parse_seeds, positive_int
from noisefast.params import SETTINGS

def int_list(text: str) -> list[int]:
    """``"1,8,32"`` → [1, 8, 32] (positive integers)."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated positive integers, e.g. 1,8,32")
    return out


def name_list(choices):
    def parse(text: str) -> list[str]:
        out = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in out if x not in choices]
        if bad or not out:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)} (comma-separated)")
        return out
    return parse


def shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1 or dims[0] * dims[1] * dims[2] * dims[3] > 2**31:
        raise argparse.ArgumentTypeError(f"{text!r}: a latent shape B×C×H×W, e.g. 8x4x128x128")
    return dims


def _common(p: argparse.ArgumentParser, *, rounds: str) -> None:
    g = p.add_argument_group("output and timing")
    g.add_argument("--json", metavar="FILE", help="write the result here (default, when neither --json nor --md is "
                   "given: noisefast-bench-SUBCOMMAND-DATE.json and .md in this folder; the Markdown is printed always)")
    g.add_argument("--md", metavar="FILE", help="write the Markdown here")
    g.add_argument("--quick", action="store_true", help="small sizes and few rounds (seconds on a CPU); flags win")
    g.add_argument("--rounds", type=int_in(1, 100_000), help=f"timed rounds per variant, alternated ({rounds})")
    g.add_argument("--busy-load", type=float_in(0, 10_000), metavar="LOAD",
                   help="warn when the 1-minute load average exceeds this before the run, or the run's own threads + "
                        "this during it (default: half the cores)")  # fmt: skip


def _engine(p: argparse.ArgumentParser, model_help: str | None) -> None:
    add_model_arguments(p)
    if model_help is not None:  # the measuring subcommands default to a built-in architecture
        for a in p._actions:
            if a.dest == "model":
                a.default, a.help = None, model_help


def _settings(p: argparse.ArgumentParser, skip=()) -> None:
    g = p.add_argument_group("sampling (defaults: the architecture's or the model's)")
    for param in SETTINGS.values():
        if param.name not in ("batch_size", *skip):
            g.add_argument(param.cli_flag, dest=param.name, type=param.arg_type(), help=param.help)


ARCH_HELP = ("model to measure: hub id, folder or builtin:NAME — or a built-in random-weight architecture: arch:tiny, "
             "arch:sdxl, arch:sdxl-turbo (default: arch:tiny on a CPU, arch:sdxl-turbo on CUDA)")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    from noisefast.config import BACKENDS, DTYPE_NAMES

    sub = p.add_subparsers(dest="bench", required=True, metavar="SUBCOMMAND", parser_class=type(p))
    k = sub.add_parser("kernels", help="fused ops vs eager torch; GB/s vs the device's copy bandwidth")
    k.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    k.add_argument("--dtype", action="append", choices=DTYPE_NAMES,
                   help="repeatable (default: fp32 on a CPU; fp16, bf16 and fp32 on CUDA)")  # fmt: skip
    k.add_argument("--threads", type=int_in(1, 1024), help="torch's CPU threads (the CPU kernels follow it)")
    k.add_argument("--shape", action="append", type=shape, help="latent B×C×H×W, repeatable (default: 8x4x128x128 "
                   "and 32x4x64x64; --quick: the first)")  # fmt: skip
    k.add_argument("--cases", type=name_list(("ddim_cfg", "ddim_invert", "ddim_cfg_fwd_bwd", "cosine", "cosine_fwd_bwd",
                                              "momentum", "momentum_renorm")), help="comma-separated (default: all)")
    k.add_argument("--warmup", type=int_in(0, 10_000), default=10, help="untimed calls of each first (default: 10)")
    _common(k, rounds="default: 40 on a CPU, 100 on CUDA; --quick 10 / 20")

    s = sub.add_parser("scoring", help="noisefast vs the diffusers users (per seed, batched, batched + compile)")
    _engine(s, ARCH_HELP)
    s.add_argument("--prompt", help="default: a digit prompt for builtin:digits, else 'a red fox in the snow'")
    s.add_argument("--seeds", type=parse_seeds, metavar="SPEC", help="seeds scored per run (default: 0:8; --quick 0:4, 1+1 steps)")
    s.add_argument("--users", type=name_list(("per-seed", "batched", "compiled")),
                   help="diffusers users to time: per-seed, batched, compiled (= batched + torch.compile; minutes of "
                        "compilation on a CPU) (default: all; --quick and --matrix: per-seed,batched)")  # fmt: skip
    s.add_argument("--through", type=name_list(("pipeline", "unet")),
                   help="the users call the stock pipeline and/or loop around the UNet alone (default: both where the "
                        "model has a diffusers pipeline, else unet)")  # fmt: skip
    s.add_argument("--variants", type=name_list((*BACKENDS, "fast", "plain")), default=[],
                   help="more noisefast rows: another backend, fast (the whole GPU fast path) or plain (none of it) "
                        "(default: torch when --backend is another; --matrix: fast)")
    s.add_argument("--matrix", action="store_true", help="turbo and sdxl settings × batch 8, 32, 1 within --budget-s "
                   "(the GPU matrix; variants default: fast)")  # fmt: skip
    s.add_argument("--budget-s", type=float_in(0, 86_400), default=170.0, help="--matrix: time budget (default: 170)")
    _settings(s)
    _common(s, rounds="default: 3; --quick 2")

    o = sub.add_parser("optimize", help="Algorithm 2: s/iteration and memory, checkpointed vs plain autograd")
    _engine(o, ARCH_HELP)
    o.add_argument("--prompt", help="default: as for scoring")
    o.add_argument("--seeds", type=parse_seeds, metavar="SPEC", help="noises optimised together (default: 0:1)")
    o.add_argument("--steps", dest="chain_steps", type=int_in(1, 1000), nargs="+", metavar="N",
                   help="N of the N+N chain, one row each (default: 4 10 on arch:tiny, else 1; --quick 2)")
    o.add_argument("--iters", type=int_in(1, 10_000), help="timed iterations per run (default: 3; --quick 2)")
    o.add_argument("--warmup", type=int_in(0, 10_000), default=1, help="untimed iterations per run (default: 1)")
    o.add_argument("--extras", action=argparse.BooleanOptionalAction, default=None,
                   help="count saved-for-backward bytes and the recompute bound (default: on a CPU)")
    _settings(o, skip=("steps", "inversion_steps"))
    _common(o, rounds="runs per mode, alternated; default: 2; --quick 1")

    u = sub.add_parser("unet", help="UNet calls per backend; TFLOP/s vs the device's matmul peak")
    _engine(u, ARCH_HELP)
    u.add_argument("--backends", type=name_list(BACKENDS), help="comma-separated (default: the engine's --backend)")
    u.add_argument("--resolutions", type=int_list, help="image sides (default: 128,256 on arch:tiny, 512,1024 on "
                   "SDXL, else the model's; --quick: the first)")  # fmt: skip
    u.add_argument("--batches", type=int_list, help="UNet batch sizes (default: 1,8 on a CPU, 1,8,32 on CUDA)")
    u.add_argument("--budget-s", type=float_in(0, 86_400), default=240.0, help="time budget (default: 240)")
    u.add_argument("--matmul-n", type=int_in(16, 65_536), help="matmul peak operand size (default: 2048 CPU, 8192 CUDA)")
    u.add_argument("--prompt", help="the condition's prompt (default: as for scoring)")
    _common(u, rounds="timed calls per configuration; default: 20 on a CPU, 10 on CUDA; --quick 3")

    v = sub.add_parser("serve", help="closed-loop load on a running `noisefast serve` (or one it starts)")
    _engine(v, None)
    v.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000 (default: start one on 127.0.0.1 with "
                   "the engine options here)")  # fmt: skip
    v.add_argument("--api-key", help="Bearer key for /v1/* (default: $NOISEFAST_API_KEY)")
    v.add_argument("--endpoint", choices=("select", "score"), default="select")
    v.add_argument("--seeds-per-request", type=int_in(1, 1_000_000), help="K (default: 32; --quick 4)")
    v.add_argument("--concurrency", type=int_list, help="client counts, one level each (default: 1,8,64; --quick 1,2)")
    v.add_argument("--duration", type=float_in(0.1, 86_400), help="measured seconds per level (default: 60; --quick 2)")
    v.add_argument("--max-warmup", type=float_in(0, 86_400), help="warm-up bound per level (default: 120; --quick 30)")
    v.add_argument("--max-requests", type=positive_int, help="answers per level at most (default: 100000; --quick 40)")
    v.add_argument("--prompt", help="every request's prompt (default: a random digit prompt per request)")
    v.add_argument("--max-wait-ms", type=float_in(0, 10_000), default=5.0, help="a started server's (default: 5)")
    v.add_argument("--server-timeout", type=float_in(1, 86_400), default=300.0,
                   help="seconds a started server may take to be ready (default: 300)")  # fmt: skip
    _settings(v)
    _common(v, rounds="unused: one window per level")

    c = sub.add_parser("screen", help="screening rows/s: in process, vs a select loop, and on Ray")
    _engine(c, None)
    c.add_argument("--prompts", type=int_in(1, 100_000), help="digit prompts (default: 20; --quick 3)")
    c.add_argument("--seeds", type=parse_seeds, metavar="SPEC", help="seeds per prompt (default: 0:200; --quick 0:8)")
    c.add_argument("--ray", action="store_true", help="also on a local Ray instance (needs noisefast[ray])")
    c.add_argument("--ray-workers", type=int_in(1, 1024), default=1, help="Ray actors (default: 1)")
    _settings(c)
    _common(c, rounds="default: 1")

    m = sub.add_parser("compare", help="two results side by side: ratios, what changed, regressions")
    m.add_argument("a", metavar="A.json")
    m.add_argument("b", metavar="B.json")
    m.add_argument("--threshold", type=float_in(0, 1000), default=5.0,
                   help="percent change below which nothing counts as changed (default: 5; the runs' spread also)")
    m.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    m.add_argument("--md", metavar="FILE", help="write the Markdown")
    m.add_argument("--check", action="store_true", help="exit status 3 when a regression is found")

    w = sub.add_parser("show", help="print (and --md: write) the Markdown of a saved result")
    w.add_argument("result", metavar="RESULT.json")
    w.add_argument("--md", metavar="FILE", help="write the Markdown here")


def run(args: argparse.Namespace) -> int:
    from noisefast.bench.commands import run as run_bench

    return run_bench(args)


COMMAND = Command("measure noisefast side by side with the diffusers users, on a model, a device or a server",
                  add_arguments, run)  # fmt: skip
