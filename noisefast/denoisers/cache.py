"""The on-disk cache of the compiled backends: where it lives, what a key is made of, how an entry is read.

    <cache>/onnx/<key>/          an ONNX export of a UNet (`noisefast.denoisers.onnx_cache`)
    <cache>/auto/<key>.json      a decision of ``backend="auto"`` (`noisefast.denoisers.auto`)
    <cache>/inductor/            torch.compile's (inductor's) own cache (TORCHINDUCTOR_CACHE_DIR)
    <cache>/tensorrt/            TensorRT engines (`noisefast.denoisers.trt`)

``<cache>`` is the ``cache_dir`` the Engine is given (``--cache-dir``), else ``$NOISEFAST_CACHE_DIR``, else
``$XDG_CACHE_HOME/noisefast`` (``~/.cache/noisefast``). A key is the SHA-256 of everything that can change an
artefact: the UNet's weights and config (`module_fingerprint`), the shapes and options, and the versions of
the libraries that made it (`library_versions`). Entries are written atomically (a temporary sibling, then a
rename); an entry that does not parse or does not match its key is treated as missing and rebuilt, never
trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import weakref
from pathlib import Path

import torch

from noisefast.atomic import atomic_write_json

ENV = "NOISEFAST_CACHE_DIR"
_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module → (version stamp, hex digest)


def cache_dir(given: str | os.PathLike | None = None) -> Path:
    """``given``, else ``$NOISEFAST_CACHE_DIR``, else ``$XDG_CACHE_HOME/noisefast`` (``~/.cache/noisefast``)."""
    if given is not None:
        return Path(given).expanduser()
    if env := os.environ.get(ENV):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "noisefast"


def digest(obj) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys; anything else as its ``str``)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _version_stamp(module: torch.nn.Module) -> tuple:
    """Cheap stamp that changes when a parameter is replaced, moved, cast or modified in place."""
    return tuple((t.data_ptr(), t.dtype, t._version) for t in module.state_dict().values())


def module_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's class, config and every state tensor (name, dtype, shape, bytes).

    Hashing reads every weight once (SDXL's UNet in fp32: ~10 GB, seconds); the digest is remembered per module
    until a tensor is replaced or modified in place.
    """
    stamp = _version_stamp(module)
    known = _FINGERPRINTS.get(module)
    if known is not None and known[0] == stamp:
        return known[1]
    h = hashlib.sha256()
    config = {k: v for k, v in dict(getattr(module, "config", {}) or {}).items() if not k.startswith("_")}
    h.update(json.dumps([type(module).__name__, config], sort_keys=True, default=str).encode())
    for name, t in module.state_dict().items():
        t = t.detach()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
            h.update(memoryview(flat.cpu().view(torch.uint8).numpy()))
    _FINGERPRINTS[module] = (stamp, h.hexdigest())
    return _FINGERPRINTS[module][1]


def dist_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (None when it is not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(*names: str) -> dict:
    """Versions of torch, noisefast and the given distributions (None when one is not installed)."""
    return {"torch": torch.__version__, "noisefast": dist_version("noisefast"), **{n: dist_version(n) for n in names}}


def device_identity(device: torch.device) -> dict:
    """What a timing depends on besides the model: the processor (and the cores this process may use)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"gpu": torch.cuda.get_device_name(index), "capability": list(torch.cuda.get_device_capability(index)),
                "cuda": torch.version.cuda}
    return {"cpu": cpu_name(), "cores": available_cores()}


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_entry(path: Path, key: str) -> dict | None:
    """The JSON object at ``path`` if it parses and records ``key``; None (rebuild it) otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key else None


def write_entry(path: Path, key: str, data: dict) -> bool:
    """Write ``data`` (with its ``key``) atomically; False when the cache cannot be written (read-only, full disk):
    the caller goes on without caching."""
    try:
        atomic_write_json(path, {"key": key, **data})
        return True
    except OSError:
        return False


def use_inductor_cache(root: Path) -> Path:
    """Point torch.compile's persistent caches at ``root/inductor`` unless the user set TORCHINDUCTOR_CACHE_DIR.

    Inductor reads the variable whenever it opens its cache, so this takes effect for compilations that
    start afterwards (in this process and the processes it starts)."""
    return Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor")))


__all__ = ["ENV", "available_cores", "cache_dir", "cpu_name", "device_identity", "digest", "dist_version", "library_versions",
           "module_fingerprint", "read_entry", "use_inductor_cache", "write_entry"]
