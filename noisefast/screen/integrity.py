"""What a screening folder's shards can be trusted for: each shard file carries its own row count and checksum.

Written (`seal`, before the rename into ``scores/``): the Parquet schema's key-value metadata
``noisefast.shard`` = ``{"id", "stage", "rows", "sha256"}``, the SHA-256 over every column's name, type and
values (`table_checksum`). Read (`read_shard`): a shard is trusted only when it parses, carries that record, its
id is its file name (and the planned shard's, when one is expected), and its rows and checksum match — so a
truncated, zero-byte or garbage file, and one with a flipped bit in a stability value, are all caught.

`read_stage` is the one reader of a folder's rows for everyone — `load_scores`, the summaries, the cascade's
second stage and the seed bank (``noisefast serve --bank``, `noisefast.serve.bank`): verified shards only, with a
`StageStatus` saying what is missing (the manifest's ``plan`` holds the expected shard count) and which files
could not be trusted. Readers never modify the folder; the screening job moves bad shards aside and rescores
them (`noisefast.screen.shards.OutDir.verified`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

META_KEY = b"noisefast.shard"


class BadShard(Exception):
    """A shard file that cannot be trusted; ``str()`` says why. ``unsealed``: it reads but carries no checksum
    record (an older noisefast wrote it)."""

    def __init__(self, why: str, unsealed: bool = False):
        super().__init__(why)
        self.unsealed = unsealed


def table_checksum(table) -> str:
    """SHA-256 (hex) over each column's name, type and values, in column order (schema metadata excluded).

    Values are hashed in a canonical byte form, independent of how pyarrow chunks or slices them: per column the
    null mask, then for text the lengths (int64) and the UTF-8 bytes, for numbers the little-endian values."""
    h = hashlib.sha256()
    for name, col in zip(table.column_names, table.columns):
        h.update(f"{name}\x00{col.type}\x00{len(col)}\x00".encode())
        for part in _canonical(col):
            h.update(part)
    return h.hexdigest()


def _canonical(col) -> list[bytes]:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return []
    nulls = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.fill_null(arr, "")
        width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
        offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset : arr.offset + len(arr) + 1]
        data = arr.buffers()[2]
        body = b"" if data is None else memoryview(data)[int(offsets[0]) : int(offsets[-1])].tobytes()
        return [nulls, np.diff(offsets).astype("<i8").tobytes(), body]
    values = arr.to_numpy(zero_copy_only=False)
    return [nulls, np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()]


def seal(table, shard_id: str, stage: str):
    """``table`` with its ``noisefast.shard`` record (rows, checksum) in the schema metadata."""
    record = {"id": shard_id, "stage": stage, "rows": table.num_rows, "sha256": table_checksum(table)}
    return table.replace_schema_metadata({META_KEY: json.dumps(record).encode()})


def read_shard(path, *, expect_id: str | None = None, expect_rows: int | None = None, columns=None):
    """The shard's table (schema metadata dropped) if it can be trusted, else `BadShard` saying why.

    The checksum covers every column, so the whole file is read; ``columns`` then selects what is returned."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except Exception as e:  # ArrowInvalid, OSError, ...: pyarrow raises several types for a bad file
        raise BadShard(f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise BadShard("it carries no row count and checksum (not written by this version of noisefast screen)", True)
    try:
        record = json.loads(raw)
        rows, digest, sid = int(record["rows"]), str(record["sha256"]), str(record["id"])
    except (ValueError, KeyError, TypeError):
        raise BadShard("its row count and checksum record is damaged") from None
    if sid != path.stem or (expect_id is not None and sid != expect_id):
        raise BadShard(f"it records shard id {sid!r}, not {expect_id or path.stem!r}")
    table = table.replace_schema_metadata(None)
    if table.num_rows != rows or (expect_rows is not None and rows != expect_rows):
        raise BadShard(f"it holds {table.num_rows} rows; {expect_rows if expect_rows is not None else rows} expected")
    if table_checksum(table) != digest:
        raise BadShard("its contents do not match their checksum (a changed or corrupted file)")
    return table if columns is None else table.select(columns)


@dataclass
class StageStatus:
    """What a folder (``scores/`` or ``proxy/``) holds: verified shards, the ones expected, the untrusted ones."""

    folder: Path
    verified: int = 0
    rows: int = 0
    expected: int | None = None  # from the manifest's plan (None: a manifest of an older noisefast)
    bad: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def missing(self) -> int | None:
        return None if self.expected is None else max(0, self.expected - self.verified)

    @property
    def complete(self) -> bool | None:
        return None if self.expected is None else (self.missing == 0 and not self.bad)

    def describe(self) -> str:
        """One line: what is missing or untrusted (empty when complete)."""
        return describe_incomplete(self.as_dict(), self.bad[0][1] if self.bad else None)

    def as_dict(self) -> dict:
        return {"complete": self.complete, "shards_verified": self.verified, "shards_expected": self.expected,
                "shards_missing": self.missing, "rows": self.rows,
                "shards_untrusted": [str(p) for p, _ in self.bad]}  # fmt: skip


def describe_incomplete(status: dict, why: str | None = None) -> str:
    """``StageStatus.as_dict()`` (or a DataFrame's ``attrs`` from `load_scores`) as one line: what is missing or
    cannot be trusted — "3 of 4 shards missing; 1 shard file(s) that cannot be trusted, e.g. PATH (why)"."""
    parts = []
    if status.get("shards_missing"):
        parts.append(f"{status['shards_missing']} of {status['shards_expected']} shards missing")
    if status.get("shards_untrusted"):
        parts.append(f"{len(status['shards_untrusted'])} shard file(s) that cannot be trusted, e.g. "
                     f"{status['shards_untrusted'][0]}" + (f" ({why})" if why else ""))  # fmt: skip
    return "; ".join(parts)


@dataclass
class StageRows:
    table: object  # pyarrow.Table of the verified shards (None when there are none)
    status: StageStatus


def expected_shards(manifest: dict | None, folder: str) -> int | None:
    plan = (manifest or {}).get("plan") or {}
    entry = plan.get(folder)
    return None if not isinstance(entry, dict) or "shards" not in entry else int(entry["shards"])


def read_stage(root, folder: str = "scores", *, columns=None, manifest: dict | None = None) -> StageRows:
    """The verified rows of ``root/folder`` (one table) and its `StageStatus`; reads, never modifies."""
    import pyarrow as pa

    d = Path(root) / folder
    status = StageStatus(d, expected=expected_shards(manifest, folder))
    tables = []
    for f in sorted(d.glob("*.parquet")) if d.is_dir() else ():
        try:
            t = read_shard(f, columns=columns)
        except BadShard as e:
            status.bad.append((f, str(e)))
            continue
        tables.append(t)
        status.verified += 1
        status.rows += t.num_rows
    return StageRows(pa.concat_tables(tables) if tables else None, status)


__all__ = ["BadShard", "META_KEY", "StageRows", "StageStatus", "describe_incomplete", "expected_shards", "read_shard",
           "read_stage", "seal", "table_checksum"]
