"""``noisefast serve``: the HTTP server (`noisefast.serve`), the model loaded once at start-up.

Binds 127.0.0.1 unless told otherwise; ``--api-key`` (or ``NOISEFAST_API_KEY``) requires
``Authorization: Bearer KEY`` on every /v1/* call. Limits per request (``--max-*``, ``--timeout``) are in the
published OpenAPI; the connection limits (``--body-timeout``, ``--max-header-bytes``, ``--max-headers``,
``--keep-alive-timeout``) bound what a slow or hostile client can hold. SIGTERM / Ctrl-C: stop accepting, let the requests in
flight finish (up to ``--graceful-timeout``), stop the model's thread, exit 0.
"""

from __future__ import annotations

import argparse
import os

from noisefast.cli.args import Command, add_model_arguments, float_in, int_in, positive_int
from noisefast.defaults import DEFAULT_MAX_COST


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    g.add_argument("--port", type=int_in(0, 65535), default=8000, help="port (default: 8000)")
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $NOISEFAST_API_KEY; none: open)")  # fmt: skip
    g.add_argument("--graceful-timeout", type=float_in(0, 3600), default=60.0,
                   help="seconds SIGTERM waits for requests in flight (default: 60)")  # fmt: skip
    g.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    b = p.add_argument_group("batching (rows per UNet batch, shared by concurrent requests: --batch-size)")
    b.add_argument("--max-wait-ms", type=float_in(0, 10_000), default=5.0,
                   help="how long a batch waits for more rows (default: 5)")  # fmt: skip
    b.add_argument("--max-queue", type=positive_int, default=4096, help="rows queued before 429 (default: 4096)")
    b.add_argument("--max-queue-tasks", type=positive_int, default=64,
                   help="optimize/generate calls queued before 429 (default: 64)")  # fmt: skip
    lim = p.add_argument_group("limits (per request)")
    lim.add_argument("--timeout", type=float_in(0.001, 86400), default=60.0,
                     help="seconds before 504; its queued rows are dropped (default: 60)")  # fmt: skip
    lim.add_argument("--max-seeds", type=positive_int, default=1024, help="seeds per request (default: 1024)")
    lim.add_argument("--max-steps", type=positive_int, default=100, help="steps / inversion_steps (default: 100)")
    lim.add_argument("--max-side", type=positive_int, default=1024, help="height / width in pixels (default: 1024)")
    lim.add_argument("--max-iterations", type=positive_int, default=500, help="optimize iterations (default: 500)")
    lim.add_argument("--max-cost", type=positive_int, default=DEFAULT_MAX_COST,
                     help="rows × UNet calls × latent pixels one request may cost; over it: 422 (default: "
                          f"{DEFAULT_MAX_COST}, about the default optimize call on builtin:digits; see README)")  # fmt: skip
    lim.add_argument("--max-body-bytes", type=positive_int, default=1_000_000, help="request body (default: 1000000)")
    conn = p.add_argument_group("connections")
    conn.add_argument("--body-timeout", type=float_in(0.001, 3600), default=30.0,
                      help="seconds for a request's whole body to arrive; else 408 (default: 30)")  # fmt: skip
    conn.add_argument("--max-header-bytes", type=int_in(1024, 1 << 20), default=16_384,
                      help="request line + headers, bytes; beyond: 431 (default: 16384)")  # fmt: skip
    conn.add_argument("--max-headers", type=int_in(1, 10_000), default=100, help="header fields; beyond: 431 (default: 100)")
    conn.add_argument("--keep-alive-timeout", type=float_in(0, 3600), default=5.0,
                      help="seconds an idle keep-alive connection stays open (default: 5)")  # fmt: skip
    bank = p.add_argument_group("seed bank")
    bank.add_argument("--bank", metavar="DIR", help="a `noisefast screen` result folder: select answers from it at once")
    bank.add_argument("--bank-any-prompt", action="store_true",
                      help="for prompts not in the bank, rank seeds by their mean stability over the bank's prompts "
                           "(see README: seed transfer)")  # fmt: skip
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the warm-up batch before /readyz")


def config_from_args(args: argparse.Namespace):
    from noisefast.config import EngineConfig
    from noisefast.serve import ServeConfig

    return ServeConfig(
        engine=EngineConfig.from_cli_args(args), max_wait_ms=args.max_wait_ms, max_queue_rows=args.max_queue,
        max_queue_tasks=args.max_queue_tasks, request_timeout_s=args.timeout, max_seeds=args.max_seeds,
        max_steps=args.max_steps, max_side=args.max_side, max_iterations=args.max_iterations,
        max_cost=args.max_cost, max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout,
        max_header_bytes=args.max_header_bytes, max_headers=args.max_headers, keep_alive_s=args.keep_alive_timeout,
        api_key=args.api_key or os.environ.get("NOISEFAST_API_KEY") or None,
        bank=args.bank, bank_any_prompt=args.bank_any_prompt, warmup=args.warmup,
    )  # fmt: skip


def uvicorn_options(config) -> dict:
    """The connection limits as uvicorn's options: the h11 parser, whose incomplete-event bound caps a header block
    at twice ``max_header_bytes`` before it is held in memory (httptools has no such bound) — between the two the
    server's door answers 431 with the error body, beyond it h11 answers 400 and closes — and the keep-alive
    timeout."""
    return {"http": "h11", "h11_max_incomplete_event_size": 2 * config.max_header_bytes,
            "timeout_keep_alive": config.keep_alive_s}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from noisefast.cli import raise_if_interrupted
    from noisefast.errors import InputError

    try:
        import uvicorn

        from noisefast.serve.app import create_app
    except ImportError as e:
        raise InputError(f"noisefast serve needs the [serve] extra: pip install 'noisefast[serve]' ({e})") from None
    if args.bank_any_prompt and not args.bank:
        raise InputError("--bank-any-prompt needs --bank")
    config = config_from_args(args)
    app = create_app(config)
    raise_if_interrupted()  # a Ctrl-C held back during the imports: before uvicorn takes Ctrl-C over
    uvicorn.run(app, **uvicorn_options(config), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.graceful_timeout)  # fmt: skip
    return 0


COMMAND = Command("serve the four algorithms over HTTP (FastAPI; dynamic batching, seed bank, metrics)",
                  add_arguments, run)  # fmt: skip
