"""``backend="auto"``: per call shape, the fastest forward backend this machine has, measured on real calls.

    den = AutoDenoiser(unet)            # what the Engine builds by default
    den(x, t, cond)                     # first call of a shape: decide (or read the decision), then run

For each *call shape* — rows rounded up to a power-of-two bucket, latent shape, dtype, condition shapes — on
this model (weights fingerprint), device, dtype, thread count and library versions:

1. **Cached decision**: ``<cache>/auto/<key>.json`` (`noisefast.denoisers.cache`) names the backend to use;
   its artefacts (the ONNX export, inductor's cache, the TensorRT engine) are in the cache too, so another
   process starts on the chosen backend at once. A decision that does not parse, does not match its key or
   names a backend that cannot be built here is measured again.
2. **Measurement**: every candidate is built (its one-time cost, e.g. the ONNX export, recorded as
   ``setup_s``), called once to warm up, then timed round-robin on the call it was asked for (`ROUNDS`);
   the fastest median wins — but a backend other than eager torch only when it is more than `MARGIN`
   faster, so ``auto`` is never slower than eager beyond the timing noise. The winner's own output of the
   last round is returned, so the deciding call is not wasted. The decision (every candidate's ms per call,
   load average, time) is written atomically to the cache.

Candidates (`candidate_backends`): eager ``torch`` always; ``onnxruntime`` when installed (CPU, or CUDA
with onnxruntime-gpu) — on a multi-core CPU without a configured thread count both its all-cores pool and
``onnxruntime-1thread``, since which pays depends on the model's size and the machine's load (measured:
bench/results/ort-threads-2026-12-07.md); ``tensorrt`` when importable on CUDA; ``compile`` on CUDA. Not
tried, with the measured reason (reported in `describe` as ``excluded``):
  * ``compile`` on CPU — built-in model, 200-seed select, 1 thread, 2-core Xeon under load ≈ 5
    (bench/results/compile-cpu-2026-12-07.md): 240 s of compilation cold (3 graphs), 35–45 s per new process
    with inductor's cache warm (dynamo retraces every graph), for a select eager torch runs in ~10 s; then
    109 vs 117 ms per call (1.07× eager) where ONNX Runtime does 91 ms after a 1 s export: it never pays back.
  * exports of UNets over `EXPORT_PARAM_LIMIT` parameters on CPU, unless already in the cache: the full-size
    SDXL UNet's export takes minutes and ~14 GB of memory (bench/results/realscale-*.md); run
    ``noisefast export`` or ``--backend onnxruntime`` once to make it, after which ``auto`` measures it.
Gradients never go through the choice: a call whose inputs require grad runs eager torch (``autograd``).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field, fields

import torch

from noisefast.denoisers.base import Condition, wants_grad
from noisefast.denoisers.cache import (available_cores, cache_dir as cache_root, device_identity, digest, library_versions, module_fingerprint,
                                       read_entry, write_entry)

ORT_ONE_THREAD = "onnxruntime-1thread"  # ONNX Runtime on one intra-op thread (beside the all-cores pool)
ROUNDS = 5  # timed rounds per candidate when one call takes < 0.2 s (3 below 2 s, else 1)
MARGIN = 0.05  # a non-eager backend must be this much faster than eager torch to be chosen
EXPORT_PARAM_LIMIT = 500_000_000  # CPU: no automatic export above this (SDXL's UNet: 2.57 B)
COMPILE_CPU_REASON = ("not tried on CPU: measured 1.07× eager per call after 35–45 s of warm-up per process (cold: "
                      "4–5.5 min), slower than ONNX Runtime (bench/results/compile-cpu-2026-12-07.md)")


@dataclass
class Decision:
    """The backend one call shape runs on, and the measurements behind it."""

    shape: dict  # rows bucket, latent [C, H, W], dtype, condition shapes
    chosen: str
    ms_per_call: dict = field(default_factory=dict)  # candidate → median ms (None: failed to build or run)
    errors: dict = field(default_factory=dict)  # candidate → why it could not run
    setup_s: dict = field(default_factory=dict)  # candidate → one-time cost in this process (export, build)
    source: str = "measured"  # "measured" now, or read from the "cache"
    load_average: float | None = None
    created: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def choose(ms_per_call: dict) -> str:
    """The fastest candidate by median ms per call; eager ``torch`` unless another is more than `MARGIN` faster."""
    timed = {n: v for n, v in ms_per_call.items() if v is not None}
    best = min(timed, key=timed.__getitem__)
    if best != "torch" and "torch" in timed and timed[best] > (1 - MARGIN) * timed["torch"]:
        return "torch"  # within the noise of eager: keep the reference runtime
    return best


def bucket(rows: int) -> int:
    """The power of two ≥ ``rows``: call shapes within a bucket share one decision."""
    return 1 << max(0, rows - 1).bit_length()


def candidate_backends(unet, device: torch.device, root) -> tuple[list[str], dict[str, str]]:
    """``(candidates, excluded)``: the backends ``auto`` times here, and those it skips with the reason."""
    import importlib.util

    candidates, excluded = ["torch"], {}
    have = {name: importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "tensorrt")}
    params = sum(p.numel() for p in unet.parameters())
    if device.type == "cuda":
        candidates.append("compile")
        if have["tensorrt"] and have["onnx"]:
            candidates.append("tensorrt")
        else:
            excluded["tensorrt"] = "tensorrt (and onnx) not installed: pip install 'noisefast[tensorrt]'"
    else:
        excluded["compile"] = COMPILE_CPU_REASON
        excluded["tensorrt"] = "needs a CUDA device"
    if not (have["onnxruntime"] and have["onnx"]):
        excluded["onnxruntime"] = "onnxruntime (and onnx) not installed: pip install 'noisefast[onnx]'"
    elif device.type == "cuda" and not _ort_has_cuda():
        excluded["onnxruntime"] = "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
    elif unet.dtype not in (torch.float32, torch.float16):
        excluded["onnxruntime"] = f"the ONNX export takes float32 or float16 weights, not {unet.dtype}"
    elif device.type == "cpu" and params > EXPORT_PARAM_LIMIT and not _export_cached(unet, root):
        excluded["onnxruntime"] = (f"{params / 1e9:.2f} B parameters: the export takes minutes and ~14 GB on a CPU, "
                                   "not done automatically; make it once with --backend onnxruntime")
    else:
        candidates.append("onnxruntime")
    return candidates, excluded


def _ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _export_cached(unet, root) -> bool:
    from noisefast.denoisers.onnx_cache import export_folder, export_is_intact, ort_export_options
    from noisefast.denoisers.onnx_io import MODEL_FILE

    return export_is_intact(export_folder(unet, root, ort_export_options(unet)) / MODEL_FILE)


class AutoDenoiser:
    """``model_out = den(x, t, cond)`` on the fastest backend for the call's shape (see the module docstring).

    ``cache_dir``: the noisefast cache folder (default `noisefast.denoisers.cache.cache_dir`). ``threads``: CPU
    threads for ONNX Runtime (default: every core this process may use). ``candidates``: restrict the backends
    tried (each must be one `candidate_backends` allows here). ``exclude``: backends not to try, with the reason
    (reported like the built-in exclusions). ``eager``: the ``torch`` candidate, and what gradients go through
    (default ``UNetDenoiser(unet)``; the GPU fast path passes its `FastPathDenoiser`).
    """

    backend = "auto"

    def __init__(self, unet, *, cache_dir=None, threads: int | None = None, candidates=None,
                 exclude: dict[str, str] | None = None, eager=None):
        from noisefast.denoisers.unet import UNetDenoiser

        self.unet = unet
        self.autograd = eager or UNetDenoiser(unet)  # eager torch: candidate, and the path of every gradient
        self.root = cache_root(cache_dir)
        self.threads = threads
        self.candidates, self.excluded = candidate_backends(unet, self.autograd.device, self.root)
        if candidates is not None:
            unknown = [c for c in candidates if c not in self.candidates]
            if unknown:
                raise ValueError(f"auto cannot try {unknown} here; it can try {self.candidates} "
                                 f"(excluded: {self.excluded})")
            self.candidates = ["torch", *[c for c in candidates if c != "torch"]]
        for name, why in (exclude or {}).items():
            if name in self.candidates and name != "torch":
                self.candidates.remove(name)
                self.excluded[name] = why
        if "onnxruntime" in self.candidates and threads is None and self.device.type == "cpu" and available_cores() > 1:
            # how many threads pay depends on the model's size and the machine's load (bench/results/ort-threads-*):
            # both pools are timed; they share one export and one decision
            self.candidates.insert(self.candidates.index("onnxruntime") + 1, ORT_ONE_THREAD)
        self._dens: dict[tuple, object] = {("torch", 0): self.autograd}
        self._setup_s: dict[str, float] = {}
        self.artefacts: dict[str, dict] = {}  # candidate → what its one-time setup made or reused (export, caches)
        self._failed: dict[tuple, str] = {}
        self.decisions: dict[tuple, Decision] = {}

    in_channels = property(lambda self: self.autograd.in_channels)
    sample_size = property(lambda self: self.autograd.sample_size)
    dtype = property(lambda self: self.autograd.dtype)
    device = property(lambda self: self.autograd.device)

    def __repr__(self) -> str:
        return f"AutoDenoiser({self.autograd!r}, candidates={self.candidates})"

    # --- the call ----------------------------------------------------------------------------------------
    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W]
        t: torch.Tensor,  # [B] timesteps
        cond: Condition,  # batch B or 1
    ) -> torch.Tensor:  # [B, C, H, W] in x's dtype and device
        if wants_grad(x, cond):
            return self.autograd(x, t, cond)
        shape = _call_shape(x, cond)
        decision = self.decisions.get(shape)
        if decision is None:
            decision, out = self._decide(shape, x, t, cond)
            if out is not None:
                return out
        return self._den(decision.chosen, shape)(x, t, cond)

    def describe(self) -> dict:
        """The candidates, the excluded backends (why), and every decision taken so far (ms per call each)."""
        return {"backend": "auto", "candidates": list(self.candidates), "excluded": dict(self.excluded),
                "cache_dir": str(self.root), "artefacts": {k: dict(v) for k, v in list(self.artefacts.items())},
                "decisions": [d.as_dict() for d in list(self.decisions.values())]}

    def chosen(self) -> list[str]:
        """The distinct backends chosen so far, in decision order."""
        return list(dict.fromkeys(d.chosen for d in self.decisions.values()))

    # --- building the candidates ----------------------------------------------------------------------------
    def _den(self, name: str, shape: tuple):
        key = (name, shape[0] if name == "tensorrt" else 0)  # a TensorRT engine is built per batch bucket
        den = self._dens.get(key)
        if den is None:
            if key in self._failed:
                raise RuntimeError(self._failed[key])
            t0 = time.perf_counter()
            try:
                den = self._dens[key] = self._build(name, shape[0])
            except Exception as e:  # a candidate that cannot be built here is reported, not fatal
                self._failed[key] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                raise RuntimeError(self._failed[key]) from e
            self._setup_s[name] = round(time.perf_counter() - t0, 3)
        return den

    def _build(self, name: str, rows: int):
        if name == "compile":
            self.artefacts["compile"] = {"inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
            from noisefast.denoisers.compiled import CompiledDenoiser

            return CompiledDenoiser(self.unet, cache_dir=self.root)
        if name in ("onnxruntime", ORT_ONE_THREAD):
            from noisefast.denoisers.onnx_cache import cached_export, ort_export_options
            from noisefast.denoisers.ort import OnnxRuntimeDenoiser

            path, fresh = cached_export(self.unet, self.root, ort_export_options(self.unet))
            art = self.artefacts.setdefault("onnxruntime", {"export": str(path.parent), "exported_now": fresh})
            den = OnnxRuntimeDenoiser(path, num_threads=1 if name == ORT_ONE_THREAD else self.threads,
                                      autograd=self.autograd)
            art.setdefault("threads", {})[name] = den.threads
            return den
        from noisefast.denoisers.exported import exported_denoiser

        return exported_denoiser(self.unet, "tensorrt", cache_dir=self.root, profiles=((1, rows, rows),))

    # --- deciding --------------------------------------------------------------------------------------------
    def _key(self, shape: tuple) -> str:
        return digest({
            "unet": module_fingerprint(self.unet), "device": device_identity(self.device), "dtype": str(self.dtype),
            "torch_threads": torch.get_num_threads(), "ort_threads": self.threads, "shape": shape,
            "candidates": self.candidates, "versions": library_versions("onnxruntime", "onnx", "tensorrt", "diffusers"),
        })

    def _decide(self, shape: tuple, x, t, cond) -> tuple[Decision, torch.Tensor | None]:
        if self.candidates == ["torch"]:  # nothing to measure
            self.decisions[shape] = Decision(shape=_shape_dict(shape), chosen="torch", source="only candidate")
            return self.decisions[shape], None
        key = self._key(shape)
        path = self.root / "auto" / f"{key[:32]}.json"
        entry = read_entry(path, key)
        if entry is not None and entry.get("chosen") in self.candidates:
            try:
                self._den(entry["chosen"], shape)
                decision = Decision(**{k: entry[k] for k in ("shape", "chosen", "ms_per_call", "errors", "setup_s",
                                                             "load_average", "created") if k in entry} | {"source": "cache"})
                decision.setup_s = dict(self._setup_s)
                self.decisions[shape] = decision
                return decision, None
            except RuntimeError:
                pass  # cannot build it here any more: measure again
        decision, out = self._measure(shape, x, t, cond)
        self.decisions[shape] = decision
        write_entry(path, key, {k: v for k, v in decision.as_dict().items() if k != "source"})
        return decision, out

    def _measure(self, shape: tuple, x, t, cond) -> tuple[Decision, torch.Tensor]:
        dens, errors = {}, {}
        for name in self.candidates:
            try:
                dens[name] = self._den(name, shape)
            except RuntimeError as e:
                errors[name] = str(e)
        times = {n: [] for n in dens}
        outs: dict[str, torch.Tensor] = {}

        def run_all() -> dict[str, float]:  # ms of one call of each candidate still in the race
            ms = {}
            for name in list(dens):
                try:
                    t0 = time.perf_counter()
                    outs[name] = dens[name](x, t, cond)
                    _sync(self.device)
                    ms[name] = (time.perf_counter() - t0) * 1e3
                except Exception as e:  # a backend that fails on this shape is not chosen (eager: a bad call)
                    if name == "torch":
                        raise
                    errors[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                    del dens[name], times[name]
            return ms

        # warm-up (ONNX Runtime sizes its arena, TensorRT its context, compile compiles); its eager time sets
        # how many timed rounds this decision can afford
        eager_ms = run_all()["torch"]
        rounds = ROUNDS if eager_ms < 200 else 3 if eager_ms < 2000 else 1
        for _ in range(rounds):
            for name, ms in run_all().items():
                times[name].append(ms)
        ms = {n: round(statistics.median(v), 3) for n, v in times.items() if v} | {n: None for n in errors}
        best = choose(ms)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        decision = Decision(shape=_shape_dict(shape), chosen=best, ms_per_call=ms, errors=errors,
                            setup_s=dict(self._setup_s), load_average=load, created=round(time.time(), 3))
        return decision, outs[best]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call_shape(x: torch.Tensor, cond: Condition) -> tuple:
    """What a decision is keyed on besides the model and machine: rows bucket, latent shape, dtype, condition."""
    conds = tuple((f.name, tuple(v.shape[1:])) for f in fields(cond) if (v := getattr(cond, f.name)) is not None)
    return (bucket(x.shape[0]), tuple(x.shape[1:]), str(x.dtype).removeprefix("torch."), conds)


def _shape_dict(shape: tuple) -> dict:
    rows, latent, dtype, conds = shape
    return {"rows_bucket": rows, "latent": list(latent), "dtype": dtype, "condition": {f: list(s) for f, s in conds}}


__all__ = ["AutoDenoiser", "Decision", "EXPORT_PARAM_LIMIT", "MARGIN", "ORT_ONE_THREAD", "ROUNDS", "bucket", "candidate_backends", "choose"]
