"""Atomic file writes: a reader sees the old file, the complete new one, or none — never half of one.

Everything is written to a temporary name in the destination's own folder (same filesystem) and then
``os.replace``-d into place. Reports are strict JSON (``allow_nan=False``): a NaN or an infinity is
written as ``null`` by `json_safe`, never as the bare ``NaN`` token other parsers reject.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to; renamed onto ``path`` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling, fsync, then ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def json_safe(v):
    """``v`` with non-finite floats as None, tensors/arrays as lists, paths as strings (for strict JSON)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if hasattr(v, "tolist"):  # torch / numpy
        return json_safe(v.tolist())
    if v is None or isinstance(v, (str, int, bool)):
        return v
    return str(v)


def dumps_json(obj, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (see `json_safe`)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, ensure_ascii=False)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """``obj`` as strict, indented JSON at ``path``, atomically."""
    return atomic_write_bytes(path, (dumps_json(obj) + "\n").encode())


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "dumps_json", "json_safe"]
