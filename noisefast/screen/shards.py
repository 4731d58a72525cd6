"""The exactly-once protocol of a screening run: deterministic shards, each written whole or not at all.

    OUT/manifest.json             every setting, the model identity, versions, settings_hash (written first)
    OUT/scores/<shard>.parquet    rows at the manifest's settings (the seed bank reads these)
    OUT/proxy/<shard>.parquet     the cascade's proxy-schedule rows (only with --proxy-steps)
    OUT/.staging/                 shard files being written (never read; cleared at start-up)
    OUT/.lock                     held (flock) by the one run writing OUT

A shard is a group of prompts × a block of seeds. Its id is a pure function of its content (stage, prompt
ids, seeds), so the same command always cuts the same shards. A shard's rows are scored in their own
UNet batches (batches never span shards), so its scores do not depend on which other shards ran: a
resumed run's rows equal an uninterrupted run's bit for bit. A shard file is written under
``.staging/``, fsynced, then ``os.replace``-d into ``scores/``: a reader (and a rerun) sees a shard's
every row or none of them, and a rerun skips the shards whose files exist. ``kill -9`` at any moment
loses at most the shards in flight. The same protocol runs in process and on Ray: only the driver
writes files; workers return scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noisefast.errors import InputError, OutputError
from noisefast.screen.prompts_io import PromptItem

SCORES, PROXY, STAGING = "scores", "proxy", ".staging"
SETTINGS_KEYS = ("height", "width", "steps", "inversion_steps", "guidance_scale", "inversion_guidance_scale")


@dataclass(frozen=True)
class Shard:
    """``items[i]``'s seeds ``seeds[i]`` under one stage's settings; rows in item-major, seed order."""

    id: str
    stage: str  # "full", "proxy" or "rescore"
    items: tuple[PromptItem, ...]
    seeds: tuple[tuple[int, ...], ...]  # per item

    @property
    def rows(self) -> int:
        return sum(len(s) for s in self.seeds)

    @property
    def folder(self) -> str:
        return PROXY if self.stage == "proxy" else SCORES

    @property
    def filename(self) -> str:
        return f"{self.id}.parquet"


def digest(obj) -> str:
    """SHA-256 (hex) of ``obj``'s canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seeds_digest(seeds: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(seeds, dtype=np.int64).tobytes()).hexdigest()


def shard_id(stage: str, items: Sequence[PromptItem], seeds: Sequence[Sequence[int]], tag: str) -> str:
    h = digest({"stage": stage, "prompts": [it.id for it in items], "seeds": [seeds_digest(s) for s in seeds]})
    return f"{stage}-{tag}-{h[:16]}"


def plan_grid(stage: str, items: Sequence[PromptItem], seeds: Sequence[int], shard_size: int) -> list[Shard]:
    """Every prompt × every seed, cut into shards of about ``shard_size`` rows (prompt groups × seed blocks)."""
    block = max(1, min(len(seeds), shard_size))
    per_group = max(1, shard_size // block)
    shards = []
    for g in range(0, len(items), per_group):
        group = tuple(items[g : g + per_group])
        for b in range(0, len(seeds), block):
            part = tuple(seeds[b : b + block])
            per_item = tuple(part for _ in group)
            shards.append(Shard(shard_id(stage, group, per_item, f"p{g:06d}-s{b:09d}"), stage, group, per_item))
    return shards


def plan_rescore(items: Sequence[PromptItem], top: dict[str, tuple[int, ...]], shard_size: int) -> list[Shard]:
    """The cascade's second stage: each prompt's ``top[id]`` seeds, prompts grouped into ~``shard_size`` rows."""
    m = max(1, max((len(s) for s in top.values()), default=1))
    per_group = max(1, shard_size // m)
    shards = []
    for g in range(0, len(items), per_group):
        group = tuple(items[g : g + per_group])
        seeds = tuple(tuple(top[it.id]) for it in group)
        shards.append(Shard(shard_id("rescore", group, seeds, f"p{g:06d}"), "rescore", group, seeds))
    return shards


# --- the output folder ------------------------------------------------------------------------------------
class OutDir:
    """``OUT``: its lock, the finished shards, and the one way a shard file gets there."""

    def __init__(self, root):
        self.root = Path(root)
        self._lock = None

    def prepare(self) -> "OutDir":
        if self.root.exists() and not self.root.is_dir():
            raise OutputError(f"--out {self.root} exists and is not a folder")
        try:
            for d in (SCORES, STAGING):
                (self.root / d).mkdir(parents=True, exist_ok=True)
            self._lock = open(self.root / ".lock", "a+")
        except OSError as e:
            raise OutputError(f"cannot write to --out {self.root}: {e.strerror or e}") from None
        try:
            import fcntl  # POSIX; elsewhere the lock is skipped (one run per folder is then the user's care)

            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            self._lock.close()
            self._lock = None
            raise OutputError(f"--out {self.root} is being written by another noisefast screen run") from None
        for stale in (self.root / STAGING).iterdir():  # shards a killed run was writing: never renamed, never read
            stale.unlink(missing_ok=True)
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def done(self, shard: Shard) -> bool:
        return (self.root / shard.folder / shard.filename).is_file()

    def write(self, shard: Shard, table) -> Path:
        """``table`` (pyarrow) as the shard's file: staged, fsynced, renamed into place, folder fsynced."""
        import pyarrow.parquet as pq

        final = self.root / shard.folder / shard.filename
        final.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=shard.id + ".", suffix=".tmp", dir=self.root / STAGING)
        try:
            with os.fdopen(fd, "wb") as f:
                pq.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return final

    def clear(self) -> None:
        """``--force``: remove what a screening run wrote here (and nothing else)."""
        for d in (SCORES, PROXY, STAGING):
            for f in (self.root / d).glob("*") if (self.root / d).is_dir() else ():
                if f.is_file() and (f.suffix in (".parquet", ".tmp")):
                    f.unlink()
        for name in ("manifest.json", "summary.json", "summary.md", "histogram.png", "seed_stats.csv"):
            (self.root / name).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- manifest checks -----------------------------------------------------------------------------------------
def read_manifest(root) -> dict | None:
    path = Path(root) / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read it ({e}); use --force to start over or a new --out") from None


def check_same_run(old: dict, new: dict, root) -> None:
    """Refuse to resume into ``root`` when what fixes the scores or the shards differs from its manifest."""
    fields = [("model", old.get("model"), new["model"])]
    fields += [(k, old.get("settings", {}).get(k), new["settings"][k]) for k in SETTINGS_KEYS]
    fields += [(k, old.get("run", {}).get(k), new["run"][k]) for k in new["run"]]
    diffs = [f"{k} (was {_show(a)}, now {_show(b)})" for k, a, b in fields if a != b]
    if diffs:
        raise InputError(
            f"--out {root} holds a screen with other settings: {'; '.join(diffs)}. Rerun with the same settings to "
            f"resume, use a new --out, or pass --force to delete its scores and start over"
        )


def _show(v) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["OutDir", "PROXY", "SCORES", "SETTINGS_KEYS", "Shard", "check_same_run", "digest", "plan_grid",
           "plan_rescore", "read_manifest", "seeds_digest"]  # fmt: skip
