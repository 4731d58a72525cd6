"""Progress reporting, one type everywhere: a `ProgressFn` is called as ``progress(done, total)``.

Library functions (`noisefast.batching.score_stream`, `select_noise`, `optimize_noise`, the Engine)
take ``progress: ProgressFn | None`` and call it after each finished unit of work (rows, optimisation
steps); ``total`` is None when the amount of work is not known in advance. Front ends pass a
`ProgressBar` (tqdm on stderr: rate and ETA) or their own function (the server counts rows in metrics).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

ProgressFn = Callable[[int, "int | None"], None]


class ProgressBar:
    """A `ProgressFn` drawing a tqdm bar on stderr; silent (and free) when ``enabled`` is False."""

    def __init__(self, desc: str, unit: str, enabled: bool = True, *, total: int | None = None, file=None):
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self.file = file or sys.stderr
        self._bar = None
        self._total = total
        self._started = time.time()  # the work starts now: a bar first drawn after one batch still shows its true rate

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total if total is not None else self._total, desc=self.desc, unit=self.unit,
                             file=self.file, dynamic_ncols=True, leave=True)  # fmt: skip
            self._bar.start_t = self._bar.last_print_t = self._started  # not the first update's time (rate ≈ ∞)
        elif total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def step_counter(progress: ProgressFn, total: int) -> Callable[[], None]:
    """A no-argument callback reporting ``progress(n, total)`` on its n-th call (``progress(0, total)`` at once):
    for loops that know their steps but not their place (the denoising moves of `Engine.generate`)."""
    done = [0]
    progress(0, total)

    def step() -> None:
        done[0] += 1
        progress(done[0], total)

    return step


def stderr_is_terminal() -> bool:
    """Whether a progress bar would be seen (the default for front ends' ``--progress``)."""
    return sys.stderr.isatty()


__all__ = ["ProgressBar", "ProgressFn", "stderr_is_terminal", "step_counter"]
