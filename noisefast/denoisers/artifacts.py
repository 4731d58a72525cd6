"""On-disk artifacts of the compiled backends: atomic folder writes and content hashes (the cache folder: `cache`).

Exported ONNX models and TensorRT engines are large and slow to make; a reader must never see half of
one. Everything here writes to a temporary name in the destination's own folder (same filesystem) and
renames it into place, so an interrupted write leaves the old artifact or none, never a torn one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path



_CHUNK = 16 << 20  # 16 MiB reads when hashing multi-GB weight files


def temporary_sibling_dir(path: str | os.PathLike) -> Path:
    """A fresh empty folder next to ``path`` (same filesystem), for `replace_dir`; mode as ``mkdir`` gives (the
    umask's), so the export others read is not 0700."""
    from noisefast.atomic import temp_sibling_dir

    return temp_sibling_dir(path)


def replace_dir(tmp: Path, dest: Path) -> Path:
    """Move the finished folder ``tmp`` to ``dest``, replacing an existing ``dest`` whole.

    Two renames (old out of the way, new in) and then the old folder is deleted: at every instant
    ``dest`` is either absent, the complete old folder or the complete new one.
    """
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        old.rmdir()
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def sha256_files(paths) -> str:
    """SHA-256 over the bytes of ``paths`` in order (each prefixed by its name and size)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()
