"""The ``noisefast`` command: ``noisefast {score,select,optimize,generate,export,serve,screen,bench} [options]``.

Each subcommand is a module of this package exposing ``COMMAND`` (a `noisefast.cli.args.Command`: help
text, ``add_arguments(parser)``, ``run(args) -> exit code``), registered in `noisefast.cli.parser.COMMANDS`; it runs
the use cases of `noisefast.workflows` and only parses, prints and writes files.

This module is the console entry point and stays tiny: importing it loads nothing but the standard library's
``os``/``signal``/``sys``/``threading``/``time``; `main` installs its Ctrl-C handling before it imports anything
else (argparse, the subcommand, torch), so a Ctrl-C at any moment — also in the first second, while torch is being
imported — ends in one line and exit 130, never a traceback. A Ctrl-C that lands inside code run by ``exec`` (torch's
imports build dataclasses, whose methods are made with it) is held back until that returns (re-delivered every
`REDELIVER_S`, for at most `HOLD_MAX_S`): raised there, it sets CPython 3.11's ``_Py_UnhandledKeyboardInterrupt``,
which makes the interpreter kill itself with SIGINT at exit (status -2) whatever status `main` returned (measured,
a Ctrl-C at a random moment of the first 2.5 s of ``noisefast score``: 14 of 160 ended -2 (one -6) before, 0 of 160 after).

Exit codes: 0 success; 2 bad input, model or output path (a `noisefast.errors.NoisefastError`, an argparse
error, or a filesystem fault a user can fix — read-only, no permission, a full disk —, printed as one line);
130 interrupted (Ctrl-C; what finished is kept and reported); 1 an internal error (a bug: one line, and the
traceback with ``--debug``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
EXIT_INTERNAL = 1
_interrupted = False  # set by the SIGINT handler: an error after a Ctrl-C is the Ctrl-C's doing, not a bug
REDELIVER_S = 0.02  # a Ctrl-C held back inside exec() is delivered again this much later
HOLD_MAX_S = 10.0  # ... but never held longer than this (exec'd code that runs long is still interruptible)
_redelivery = None  # the pending re-delivery (a threading.Timer), cancelled when main returns
_held_since = None  # when the Ctrl-C being held back arrived (time.monotonic)


def _in_exec(frame) -> bool:
    """Whether ``frame`` runs inside ``exec`` of a string called from Python code (not the bottom frame of
    ``python -c``, which runs everything)."""
    while frame is not None:
        if frame.f_code.co_filename == "<string>" and frame.f_back is not None:
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame):
    global _interrupted, _redelivery, _held_since
    _interrupted = True
    now = time.monotonic()
    _held_since = _held_since or now
    if now - _held_since < HOLD_MAX_S and _in_exec(frame):  # not inside exec() (module docstring): once it returned
        _redelivery = threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signal.SIGINT))
        _redelivery.daemon = True
        _redelivery.start()
        return
    _held_since = None
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a Ctrl-C arrived and was held back (exec'd code was running): for a command about to hand
    Ctrl-C to another handler (the server's), which would otherwise receive the re-delivered one."""
    if _interrupted:
        if _redelivery is not None:
            _redelivery.cancel()
        raise KeyboardInterrupt


def _install_sigint():
    """Our handler (it raises KeyboardInterrupt, as Python's does, and remembers it); returns the previous one, or
    None when none was installed (not the main thread, or a handler other than Python's default is in place)."""
    global _interrupted, _held_since
    _interrupted, _held_since = False, None
    try:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return None  # an embedding program's own handling (or SIG_IGN) is left alone
        return signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread
        return None


def _interrupted_exit() -> int:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while we report the first: no traceback
    except ValueError:
        pass
    print("noisefast: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, optional-dependency notices) is not the command's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import logging

        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        for lib in (dlog, tlog):  # their failures reach the user as noisefast's own one-line errors
            lib.disable_progress_bar()
            lib.set_verbosity(logging.CRITICAL)
    except ImportError:
        pass


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 500 else text[:497] + "..."


def _os_error_line(e: OSError) -> str | None:
    """A filesystem fault a user can fix, as one line naming the path and what to do (None: not one of those)."""
    import errno

    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR,
                       errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ENOTEMPTY, errno.EBUSY, errno.ELOOP):  # fmt: skip
        return None
    from noisefast.atomic import output_error

    where = e.filename if e.filename is not None else "a file"
    return str(output_error(e, where, "use"))


def main(argv: list[str] | None = None) -> int:
    previous = _install_sigint()  # first: a Ctrl-C during the imports below is one line and exit 130
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        return _interrupted_exit()
    finally:
        if _redelivery is not None:
            _redelivery.cancel()
        if previous is not None:
            try:
                signal.signal(signal.SIGINT, previous)
            except ValueError:
                pass


def _main(argv: list[str]) -> int:
    from noisefast.cli.parser import build_parser
    from noisefast.errors import NoisefastError

    debug = "--debug" in argv[:1] or os.environ.get("NOISEFAST_DEBUG") == "1"
    args = build_parser(argv).parse_args(argv)
    try:
        if not debug:
            _quiet_libraries()
        code = int(args._command.run(args) or EXIT_OK)
        # a Ctrl-C held back inside exec() and re-delivered to a handler installed since (uvicorn's: a graceful
        # shutdown) is still the user's interrupt
        return _interrupted_exit() if _interrupted and code == EXIT_OK else code
    except KeyboardInterrupt:
        return _interrupted_exit()
    except NoisefastError as e:
        if _interrupted:  # e.g. a model load that failed because the Ctrl-C broke an import
            return _interrupted_exit()
        if debug:
            raise
        print(f"noisefast {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug, or an environment failure no check foresaw: one line, traceback on request
        if _interrupted:
            return _interrupted_exit()
        if debug:
            raise
        line = _os_error_line(e) if isinstance(e, OSError) else None
        if line is None and isinstance(e, MemoryError):
            line = "out of memory: use a smaller height/width, fewer seeds or fewer rows per UNet batch (--batch-size)"
        if line is not None:
            print(f"noisefast {args.command}: error: {_one_line(line)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"noisefast {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              f"(run with --debug for the traceback)", file=sys.stderr)  # fmt: skip
        return EXIT_INTERNAL


def __getattr__(name: str):  # the parser's names, loaded when asked for (importing this module stays tiny)
    if name in ("COMMANDS", "build_parser", "load_command"):
        from noisefast.cli import parser

        return getattr(parser, name)
    if name in ("parse_seeds", "Command"):
        from noisefast.cli import args

        return getattr(args, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMMANDS", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main", "parse_seeds"]

if __name__ == "__main__":
    sys.exit(main())
