"""Where a measurement ran and how busy the machine was: recorded with every ``noisefast bench`` result.

`machine_info` — CPU model and cores, torch threads, GPU name, memory, capability and driver, platform;
`versions` — Python, torch, diffusers, transformers, numpy, noisefast (and its build), the git commit when run
from a checkout; `LoadMonitor` — the load average sampled at the start, between parts and at the end, and a
warning when other work was running: a run is *busy* when the 1-minute load before it exceeds ``threshold``
(default half the cores), or after it exceeds the threads the run used itself plus ``threshold``.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from noisefast.denoisers.cache import (  # one home for the CPU's name and package versions
    cpu_name,
    dist_version,
)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # not on this platform
        return None


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def gpu_info() -> dict | None:
    """The current CUDA device (None without one)."""
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count,
            "capability": f"{p.major}.{p.minor}", "cuda_runtime": torch.version.cuda, "driver": _nvidia_driver(),
            "count": torch.cuda.device_count()}  # fmt: skip


def machine_info() -> dict:
    import torch

    return {"host": platform.node(), "platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu_info()}  # fmt: skip


def git_commit() -> str | None:
    """``git describe --always --dirty`` of the source checkout this package runs from (None when installed)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict:
    import torch

    from noisefast import _ext

    out = {"python": platform.python_version(), "torch": torch.__version__}
    out |= {m: dist_version(m) for m in ("diffusers", "transformers", "numpy", "noisefast", "onnxruntime", "ray")}
    out["git"] = git_commit()
    out["build"] = _ext.build_info()
    return out


class LoadMonitor:
    """Load-average samples over a run; `busy` and `warnings` judge them against ``threshold``."""

    def __init__(self, threshold: float | None = None, own_threads: int = 1):
        self.threshold = float(threshold) if threshold is not None else max(0.5, 0.5 * (os.cpu_count() or 1))
        self.own_threads = own_threads
        self.t0 = time.monotonic()
        self.samples: list[dict] = []
        self.sample("start")

    def sample(self, at: str) -> None:
        la = load_average()
        if la is not None:
            self.samples.append({"at": at, "t_s": round(time.monotonic() - self.t0, 1),
                                 "load_1m": la[0], "load_5m": la[1], "load_15m": la[2]})  # fmt: skip

    def busy(self) -> bool | None:
        if not self.samples:
            return None
        first, rest = self.samples[0]["load_1m"], [s["load_1m"] for s in self.samples[1:]]
        return first > self.threshold or any(x > self.own_threads + self.threshold for x in rest)

    def warnings(self) -> list[str]:
        if not self.busy():
            return []
        loads = ", ".join(f"{s['load_1m']:.1f}" for s in self.samples)
        return [f"the machine was busy: 1-minute load average {loads} (start … end) on {os.cpu_count()} cores, "
                f"threshold {self.threshold:g} before the run and {self.own_threads} thread(s) of its own + "
                f"{self.threshold:g} during it; absolute rates are indicative, ratios of the alternated variants "
                f"hold better"]  # fmt: skip

    def as_dict(self) -> dict:
        return {"samples": self.samples, "threshold": self.threshold, "own_threads": self.own_threads,
                "busy": self.busy()}  # fmt: skip
