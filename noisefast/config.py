"""`EngineConfig`: how to build an Engine, defined once for every door (after vLLM's ``EngineArgs``).

    config = EngineConfig(model="builtin:digits", backend="onnxruntime", batch_size=32)
    engine = Engine.from_config(config)
    p = argparse.ArgumentParser(); EngineConfig.add_cli_args(p); config = EngineConfig.from_cli_args(p.parse_args())
    EngineConfig.from_dict(config.as_dict()) == config        # plain data: crosses to Ray actors and into reports

The command line's subcommands, the HTTP server (and its Ray Serve replicas), the screening job (and its Ray
actors) and ``noisefast bench`` all build their Engine from an `EngineConfig` — nothing else turns flags into
an Engine (`noisefast.pipeline.Engine.from_config`), so an option added here reaches every door, and an option a
door cannot honour is refused there.
`FastPathOptions` (the GPU fast path) is part of it. The thread policy lives here too (`default_threads`).

This module imports nothing heavy (no torch): ``noisefast --help`` builds its options from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field

from noisefast.defaults import FAMILIES  # families a pipeline folder may be forced into (--family)
from noisefast.errors import InputError
from noisefast.params import SETTINGS, THREADS

DEFAULT_MODEL = "builtin:digits"
BACKENDS = ("auto", "torch", "compile", "onnxruntime", "tensorrt")
# the fastest backend measured on this machine per call shape, decision and artefacts cached (noisefast.denoisers.auto)
DEFAULT_BACKEND = "auto"
DTYPE_NAMES = ("fp16", "bf16", "fp32")
ATTENTION = ("default", "sdpa", "flash", "efficient", "cudnn", "math")
FAST_DTYPES = ("float16", "bfloat16", "float32")
_TORCH_DTYPE_NAMES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}


@dataclass(frozen=True)
class FastPathOptions:
    """The GPU fast path's pieces (`noisefast.denoisers.fastpath` applies them); the defaults are the plain path.

    dtype: the UNet's weights, noise and condition in this dtype end to end (None keeps the model's);
    channels_last: NHWC UNet; attention: the SDPA kernel; fuse_qkv: one QKV matmul per attention;
    cuda_graph: the denoise→invert→cosine chain replayed as one CUDA graph per batch size; pinned: seed noise
    drawn into page-locked buffers and copied ``non_blocking``. cuda_graph and pinned need CUDA: elsewhere the
    Engine warns once and runs without them.
    """

    dtype: str | None = None
    channels_last: bool = False
    attention: str = "default"
    fuse_qkv: bool = False
    cuda_graph: bool = False
    pinned: bool = False

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in FAST_DTYPES:
            raise InputError(f"FastPathOptions.dtype must be one of {FAST_DTYPES} or None, got {self.dtype!r}")
        if self.attention not in ATTENTION:
            raise InputError(f"FastPathOptions.attention must be one of {ATTENTION}, got {self.attention!r}")
        for name in ("channels_last", "fuse_qkv", "cuda_graph", "pinned"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"FastPathOptions.{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def torch_dtype(self):
        import torch

        return None if self.dtype is None else getattr(torch, self.dtype)

    @classmethod
    def turbo(cls) -> "FastPathOptions":
        """Everything on, fp16: ``--fast`` (what bench/gpu_check.sh measures as "noisefast fast path")."""
        return cls(dtype="float16", channels_last=True, attention="sdpa", fuse_qkv=True, cuda_graph=True, pinned=True)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def is_plain(self) -> bool:
        return self == FastPathOptions()


@dataclass(frozen=True)
class EngineConfig:
    """Everything that decides how an Engine is built and runs (not the per-call `Settings`).

    model: hub id, local diffusers folder or ``builtin:NAME``; device: ``cuda``, ``cuda:1``, ``cpu`` (None: CUDA
    when available); dtype: ``fp16``/``bf16``/``fp32`` (None: fp16 on CUDA for latent models, else fp32);
    backend: the UNet forward runtime (``auto``: the fastest measured per call shape, `noisefast.denoisers.auto`);
    variant: diffusers weight variant (e.g. ``fp16``); family: force ``sdxl``/``sdxl-turbo`` defaults; batch_size:
    rows per UNet batch (None: the model's); threads: CPU threads of torch and ONNX Runtime (None: torch's
    `default_threads`, ONNX Runtime every core without spin-waiting); strict: refuse the pure-torch fallback of the
    fused kernels; fast_path: `FastPathOptions` (None: the plain path); cache_dir: ONNX exports, compile caches and
    auto's decisions (None: ``$NOISEFAST_CACHE_DIR``, else ``$XDG_CACHE_HOME/noisefast``).
    """

    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str | None = None
    backend: str = DEFAULT_BACKEND
    variant: str | None = None
    family: str | None = None
    batch_size: int | None = None
    threads: int | None = None
    strict: bool = False
    fast_path: FastPathOptions | None = field(default=None)
    cache_dir: str | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (normalising a frozen dataclass)
        if isinstance(self.model, os.PathLike):
            set_("model", os.fspath(self.model))
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError(f"model must be a hub id, a folder or builtin:NAME, got {self.model!r}")
        if self.device is not None:
            set_("device", str(self.device))  # a torch.device is accepted
        if self.dtype is not None:
            name = _TORCH_DTYPE_NAMES.get(str(self.dtype), self.dtype)
            name = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32"}.get(name, name)
            if name not in DTYPE_NAMES:
                raise InputError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
            set_("dtype", name)
        if self.backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("variant", "family"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise InputError(f"{name} must be a non-empty string or None, got {v!r}")
        if self.batch_size is not None:
            SETTINGS["batch_size"].check(self.batch_size)
        if self.threads is not None:
            THREADS.check(self.threads)
        if not isinstance(self.strict, bool):
            raise InputError(f"strict must be a bool, got {self.strict!r}")
        if isinstance(self.cache_dir, os.PathLike):
            set_("cache_dir", os.fspath(self.cache_dir))
        if self.cache_dir is not None and (not isinstance(self.cache_dir, str) or not self.cache_dir.strip()):
            raise InputError(f"cache_dir must be a folder path or None, got {self.cache_dir!r}")
        if isinstance(self.fast_path, dict):
            set_("fast_path", FastPathOptions(**self.fast_path))
        if self.fast_path is not None:
            if not isinstance(self.fast_path, FastPathOptions):
                raise InputError(f"fast_path must be FastPathOptions or None, got {type(self.fast_path).__name__}")
            if self.fast_path.is_plain:
                set_("fast_path", None)

    # --- plain data (Ray, reports) -------------------------------------------------------------------------
    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["fast_path"] = None if self.fast_path is None else self.fast_path.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EngineConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown engine option(s) {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    # --- threads ---------------------------------------------------------------------------------------------
    def likely_pixel_model(self) -> bool:
        """Whether ``model`` names a pixel-space noisefast model (builtin or a folder with its card), before loading."""
        if self.model.startswith("builtin:"):
            return True
        return os.path.isfile(os.path.join(os.path.expanduser(self.model), "noisefast_model.json"))

    def planned_threads(self) -> int | None:
        """The threads an Engine of this config will use, before it is loaded (Ray sizes its actors with it)."""
        if self.threads is not None:
            return self.threads
        cpu = self.device is None or self.device.startswith("cpu")
        return default_threads("pixel" if self.likely_pixel_model() else "latent", "cpu" if cpu else "cuda")

    # --- command line ------------------------------------------------------------------------------------------
    @staticmethod
    def add_cli_args(p: argparse.ArgumentParser) -> None:
        """The engine options, spelled the same way by every subcommand."""
        g = p.add_argument_group("engine")
        g.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"hub id (from the local cache, else downloaded), local diffusers folder, or builtin:NAME "
                            f"(default: {DEFAULT_MODEL}, runs on a CPU in seconds)")  # fmt: skip
        g.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
        g.add_argument("--dtype", choices=DTYPE_NAMES,
                       help="default: on CUDA fp16 for SDXL, bf16 for SD3/FLUX; else fp32")
        g.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                       help=f"UNet/transformer forward runtime (default: {DEFAULT_BACKEND}: the fastest measured on this "
                            "machine per batch shape, the decision and the exports it needs cached; SD3/FLUX: auto "
                            "runs torch, SD3 also takes onnxruntime)")  # fmt: skip
        g.add_argument("--cache-dir", metavar="DIR",
                       help="ONNX exports, compile caches and auto's decisions (default: $NOISEFAST_CACHE_DIR, else "
                            "$XDG_CACHE_HOME/noisefast)")  # fmt: skip
        g.add_argument("--batch-size", type=SETTINGS["batch_size"].arg_type(), help=SETTINGS["batch_size"].help)
        g.add_argument("--threads", type=THREADS.arg_type(), help=THREADS.help)
        g.add_argument("--variant", help="diffusers weight variant to load, e.g. fp16")
        g.add_argument("--family", choices=FAMILIES,
                       help="force a family's defaults: sdxl/sdxl-turbo for SDXL, sd3/sd3-turbo for SD3, flux-dev/"
                            "flux-schnell for FLUX (default: detected from the scheduler, transformer and name)")
        g.add_argument("--strict", action="store_true",
                       help="refuse to run without the fused kernels (instead of the slower pure-torch fallback)")
        f = p.add_argument_group("GPU fast path")
        f.add_argument("--fast", action="store_true", help="all of the below, fp16 (what bench/gpu_check.sh measures)")
        f.add_argument("--channels-last", action="store_true", help="UNet in channels_last memory format")
        f.add_argument("--attention", choices=ATTENTION, default="default", help="attention kernel (default: diffusers')")
        f.add_argument("--fuse-qkv", action="store_true", help="one QKV matmul per attention")
        f.add_argument("--cuda-graph", action="store_true",
                       help="capture the denoise→invert→cosine chain per batch size and replay it (CUDA only)")
        f.add_argument("--pinned", action="store_true",
                       help="draw seed noise into pinned host buffers, copy non_blocking (CUDA only)")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineConfig":
        if args.fast:
            fast = FastPathOptions.turbo()
        else:
            fast = FastPathOptions(channels_last=args.channels_last, attention=args.attention, fuse_qkv=args.fuse_qkv,
                                   cuda_graph=args.cuda_graph, pinned=args.pinned)  # fmt: skip
        return cls(model=args.model, device=args.device, dtype=args.dtype, backend=args.backend,
                   variant=args.variant, family=args.family, batch_size=args.batch_size, threads=args.threads,
                   strict=args.strict, fast_path=fast, cache_dir=args.cache_dir)  # fmt: skip


def default_threads(kind: str, device_type: str) -> int | None:
    """The one thread policy: 1 for a pixel model on CPU (measured: its 8×8 layers run ~10× slower with 2
    threads on a busy 2-core machine, as the threads spin-wait); None (torch's default) otherwise."""
    return 1 if kind == "pixel" and device_type == "cpu" else None


__all__ = ["BACKENDS", "DEFAULT_MODEL", "EngineConfig", "FastPathOptions", "default_threads"]
