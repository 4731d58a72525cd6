"""Atomic file writes: a reader sees the old file, the complete new one, or none — never half of one.

Everything is written to a temporary name in the destination's own folder (same filesystem) and then
``os.replace``-d into place. Three promises on top of that, for every file any command writes (reports, PNGs,
``noise.safetensors``, the screening manifest, shards and summaries):

- **Modes**: the temporary file is created with ``os.open(..., 0o666)``, so the kernel applies the umask (and a
  folder's default ACL) exactly as for a plain ``open(path, "w")``: 0644 under the usual umask 022, readable by
  a seed-bank server or a web server under another account. (``tempfile.mkstemp`` would give 0600.)
- **Faults are one line**: an ``OSError`` while writing (read-only file system, no permission, a full disk) is an
  `OutputError` naming the path and what to do (`output_error`), never a raw ``[Errno 28]`` without a path.
- **No litter**: temporary names are ``.NAME.PID.RANDOM.tmp[.SUFFIX]``; a write that fails removes its own, and
  `remove_stale_temps` removes the ones a killed process left (its PID no longer runs) on the next run.

Reports are strict JSON (``allow_nan=False``): a NaN or an infinity is written as ``null`` by `json_safe`, never
as the bare ``NaN`` token other parsers reject.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from noisefast.errors import OutputError

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp(\.[^.]*)?$")  # this version's temporary names
_LEGACY_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(\.[^.]*)?$")  # tempfile.mkstemp's (noisefast ≤ 0.2)
_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space (or write elsewhere) and run again",
    errno.EDQUOT: "disk quota exceeded: free some space (or write elsewhere) and run again",
    errno.EROFS: "read-only file system: write elsewhere, or remount it read-write",
    errno.EACCES: "permission denied: make it writable (chmod u+w) or write elsewhere",
    errno.EPERM: "operation not permitted: make it writable or write elsewhere",
}


def output_error(e: OSError, path, doing: str = "write", hint: str = "") -> OutputError:
    """``e`` as a one-line `OutputError`: what failed (``doing`` ``path``), why, and what to do (+ ``hint``)."""
    why = _ADVICE.get(e.errno)
    if why is None:
        why = e.strerror or str(e) or type(e).__name__
        if e.filename is not None and os.fsdecode(e.filename) != os.fsdecode(path):
            why += f" ({os.fsdecode(e.filename)})"
        hint = hint or "check that path, or write elsewhere"
    return OutputError(f"cannot {doing} {os.fsdecode(path)}: {why}" + (f"; {hint}" if hint else ""))


def temp_sibling(path: str | os.PathLike) -> tuple[int, Path]:
    """A new, empty temporary sibling of ``path`` opened for writing (fd, path), mode ``0o666 & ~umask``."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))  # pragma: no cover


def temp_sibling_dir(path: str | os.PathLike) -> Path:
    """A new, empty folder beside ``path`` (same filesystem), mode ``0o777 & ~umask`` as ``mkdir`` gives
    (``tempfile.mkdtemp``'s 0700 would survive the rename into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))  # pragma: no cover


def remove_stale_temps(folder: str | os.PathLike, *, all_owned: bool = False) -> list[Path]:
    """Remove the temporary files of atomic writes in ``folder`` whose writer is gone (returns them).

    A name of this version carries its writer's PID: removed when that process no longer runs. Names of
    older versions (no PID), and every one when ``all_owned`` (the caller holds the folder's lock), are
    removed outright. Nothing else is touched.
    """
    removed = []
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        legacy = m is None and _LEGACY_TEMP.match(entry.name) is not None
        if not (m or legacy) or not (all_owned or legacy or not _alive(int(m["pid"]))):
            continue
        if entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
            except OSError as e:
                raise output_error(e, entry.path, "remove the stale temporary file") from None
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, under another account
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, hint: str = "") -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to; renamed onto ``path`` when the block ends without error.

    An ``OSError`` in the block or the rename is an `OutputError` naming ``path`` (``hint`` appended)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_sibling(path)
        os.close(fd)
    except OSError as e:
        raise output_error(e, path, hint=hint) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise output_error(e, path, hint=hint) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview, *, hint: str = "") -> Path:
    """Write ``data`` to ``path`` through a temporary sibling, fsync, then ``os.replace``."""
    with atomic_path(path, hint=hint) as tmp, open(tmp, "wb") as f:
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


def atomic_write_json(path: str | os.PathLike, obj, *, hint: str = "") -> Path:
    """``obj`` as strict, indented JSON at ``path``, atomically."""
    return atomic_write_bytes(path, (dumps_json(obj) + "\n").encode(), hint=hint)


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "dumps_json", "json_safe", "output_error",
           "remove_stale_temps", "temp_sibling", "temp_sibling_dir"]
