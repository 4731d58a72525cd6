"""Every error noisefast raises on purpose, in one leaf module (it imports nothing from the package).

The hierarchy maps to what a front end does with it: the command line prints ``str(error)`` as one
line and exits with ``exit_code``; the HTTP server answers ``http_status`` with the message. Anything
that is not a `NoisefastError` is a bug: the command line says so (and shows the traceback under
``--debug``), the server answers 500.

    NoisefastError (ValueError)           exit 2   HTTP 422
    ├── InputError                        exit 2   HTTP 422   a bad argument, file or setting
    │   └── LimitError                    exit 2   HTTP 413   too large for this machine / service limits
    ├── ModelError                        exit 2   HTTP 422   a model that cannot be found or loaded
    ├── BackendUnavailableError           exit 2   HTTP 503   the chosen backend / kernels cannot run here
    └── OutputError                       exit 2   HTTP 500   an output path that cannot be written

    Interrupted (KeyboardInterrupt)       exit 130            Ctrl-C: ``.result`` holds what finished
"""

from __future__ import annotations


class NoisefastError(ValueError):
    """A user-facing error: the message names what was wrong and how to fix it; ``field`` names the parameter
    (``"steps"``, ``"seeds"``, ``"noise"``) when one is to blame, so the HTTP answer can point at it."""

    exit_code = 2
    http_status = 422

    def __init__(self, *args, field: str | None = None):
        super().__init__(*args)
        self.field = field


class InputError(NoisefastError):
    """A bad argument, setting or input file."""


class LimitError(InputError):
    """A request larger than this machine (memory estimate) or the configured limits allow."""

    http_status = 413


class ModelError(NoisefastError):
    """A model that cannot be found, read or loaded (or is not a kind noisefast runs)."""


class BackendUnavailableError(NoisefastError):
    """The selected backend or the compiled kernels cannot run here; the message says how to fix it."""

    http_status = 503


class OutputError(NoisefastError):
    """An output path that cannot be created or written (exists as a file, no permission, ...)."""

    http_status = 500


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a long call (select, optimize, screen): still a ``KeyboardInterrupt`` (a script stops), but
    ``.result`` holds what finished — a partial `Selection`, `Optimization`, ... (None when nothing did)."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


__all__ = ["BackendUnavailableError", "InputError", "Interrupted", "LimitError", "ModelError", "NoisefastError",
           "OutputError"]
