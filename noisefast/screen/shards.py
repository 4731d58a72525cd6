"""The exactly-once protocol of a screening run: deterministic shards, each written whole or not at all.

    OUT/manifest.json             every setting, the model identity, versions, the plan (written first)
    OUT/scores/<shard>.parquet    rows at the manifest's settings (the seed bank reads these)
    OUT/proxy/<shard>.parquet     the cascade's proxy-schedule rows (only with --proxy-steps)
    OUT/.staging/                 shard files being written (owned by the job: emptied at start-up)
    OUT/quarantine/               shard files that could not be trusted, moved aside (and scored again)
    OUT/.lock                     held (flock) by the one run writing OUT

A shard is a group of prompts × a block of seeds. Its id is a pure function of its content (stage, prompt
ids, seeds), so the same command always cuts the same shards. A shard's rows are scored in their own
UNet batches (batches never span shards), so its scores do not depend on which other shards ran: a
resumed run's rows equal an uninterrupted run's bit for bit. A shard file is written under
``.staging/``, fsynced, then ``os.replace``-d into ``scores/``: a reader (and a rerun) sees a shard's
every row or none of them. A shard counts as done only when its file reads back and matches the row count and
checksum it carries (`noisefast.screen.integrity`); one that does not — truncated, zero bytes, garbage, a
flipped bit — is moved to ``quarantine/`` (named in one line) and scored again. ``kill -9`` at any moment loses
at most the shards in flight. The same protocol runs in process and on Ray: only the driver writes files;
workers return scores. Every filesystem fault (read-only, no permission, a full disk, a staging entry that
cannot be removed) is one `OutputError` naming the path and what to do; finished shards stay.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noisefast.atomic import output_error, remove_stale_temps, temp_sibling
from noisefast.errors import OutputError
from noisefast.screen.integrity import BadShard, read_shard, seal
from noisefast.screen.prompts_io import PromptItem

SCORES, PROXY, STAGING, QUARANTINE = "scores", "proxy", ".staging", "quarantine"
RESUME_HINT = "finished shards are kept: rerun the same command to resume"
SUMMARY_FILES = ("summary.json", "summary.md", "histogram.png", "seed_stats.csv")
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


def _grid_layout(n_seeds: int, shard_size: int) -> tuple[int, int]:
    """(seeds per block, prompts per group) of the grid plan."""
    block = max(1, min(n_seeds, shard_size))
    return block, max(1, shard_size // block)


def grid_size(n_items: int, n_seeds: int, shard_size: int) -> tuple[int, int]:
    """(shards, rows) `plan_grid` cuts — without planning them (the manifest's ``plan``)."""
    block, per_group = _grid_layout(n_seeds, shard_size)
    return -(-n_items // per_group) * -(-n_seeds // block), n_items * n_seeds


def rescore_size(n_items: int, m: int, shard_size: int) -> tuple[int, int]:
    """(shards, rows) `plan_rescore` cuts when every prompt has ``m`` top seeds."""
    return -(-n_items // max(1, shard_size // max(1, m))), n_items * m


def plan_grid(stage: str, items: Sequence[PromptItem], seeds: Sequence[int], shard_size: int) -> list[Shard]:
    """Every prompt × every seed, cut into shards of about ``shard_size`` rows (prompt groups × seed blocks)."""
    block, per_group = _grid_layout(len(seeds), shard_size)
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
    """``OUT``: its lock, the finished (verified) shards, and the one way a shard file gets there.

    ``notice(text)`` receives one line per shard moved aside or adopted (the CLI prints them on stderr)."""

    def __init__(self, root, notice: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.notice = notice or (lambda text: None)
        self.quarantined: list[Path] = []
        self._lock = None

    def prepare(self) -> "OutDir":
        """Create the folders, take the lock, empty ``.staging/``, remove stale temporary files, and check that
        every folder a run writes is writable — before the (slow) model load, so a bad folder fails at once."""
        for d in (self.root, self.root / SCORES, self.root / STAGING):
            if d.exists() and not d.is_dir():
                raise OutputError(f"{d} exists and is not a folder: move it away, or use another --out")
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise output_error(e, d, "create the folder") from None
        try:
            self._lock = open(self.root / ".lock", "a+")
        except OSError as e:
            raise output_error(e, self.root / ".lock", "create the lock file") from None
        try:
            import fcntl  # POSIX; elsewhere the lock is skipped (one run per folder is then the user's care)

            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            self.release()
            raise OutputError(f"--out {self.root} is being written by another noisefast screen run") from None
        try:
            self._empty_staging()
            remove_stale_temps(self.root, all_owned=True)  # a summary or manifest write a kill interrupted
            for d in (self.root, self.root / SCORES, self.root / STAGING, self.root / PROXY):
                if d.is_dir():
                    _probe_writable(d)
        except BaseException:
            self.release()
            raise
        return self

    def _empty_staging(self) -> None:
        """``.staging/`` holds only what a killed run was writing: never renamed, never read — remove it all."""
        staging = self.root / STAGING
        with os.scandir(staging) as it:
            entries = list(it)
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise output_error(e, entry.path, "remove the stale staging entry",
                                   f"remove it by hand ({staging} holds only what screening runs were writing)") from None  # fmt: skip

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def verified(self, shard: Shard) -> bool:
        """Whether the shard's file is there and can be trusted; an untrusted one is moved aside (→ False)."""
        path = self.root / shard.folder / shard.filename
        if not os.path.lexists(path):
            return False
        try:
            read_shard(path, expect_id=shard.id, expect_rows=shard.rows, columns=[])
            return True
        except BadShard as e:
            if e.unsealed and self._adopt(shard, path):
                return True
            self.quarantine(path, str(e))
            return False

    def _adopt(self, shard: Shard, path: Path) -> bool:
        """A shard an older noisefast wrote (no checksum) whose keys are exactly the planned ones: sealed in place."""
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
            ids = [it.id for it, seeds in zip(shard.items, shard.seeds) for _ in seeds]
            seeds = [s for part in shard.seeds for s in part]
            if table.column("prompt_id").to_pylist() != ids or table.column("seed").to_pylist() != seeds:
                return False
        except Exception:  # unreadable, columns missing: not adoptable
            return False
        self.write(shard, table)
        self.notice(f"{path}: written by an older noisefast without a checksum; its rows are the planned ones, so it "
                    f"is kept and now carries one")  # fmt: skip
        return True

    def quarantine(self, path: Path, why: str) -> Path:
        """Move an untrusted shard file to ``OUT/quarantine/`` (out of every reader's way) and say so."""
        folder = self.root / QUARANTINE
        dest = folder / f"{path.parent.name}-{path.name}.bad"
        n = 0
        while os.path.lexists(dest):
            n += 1
            dest = folder / f"{path.parent.name}-{path.name}.{n}.bad"
        try:
            folder.mkdir(exist_ok=True)
            os.replace(path, dest)
        except OSError as e:
            raise output_error(e, path, f"move the untrusted shard aside ({why})", "remove it by hand and rerun") from None
        self.quarantined.append(dest)
        self.notice(f"shard {path} cannot be trusted: {why}; moved to {dest}, it is scored again")
        return dest

    def sweep(self, stage_shards: Sequence[Shard]) -> None:
        """After a stage: move aside the untrusted files of its folder that none of its shards names."""
        if not stage_shards:
            return
        folder = stage_shards[0].folder
        names = {sh.filename for sh in stage_shards}
        for f in sorted((self.root / folder).glob("*.parquet")):
            if f.name not in names:
                try:
                    read_shard(f, columns=[])
                except BadShard as e:
                    self.quarantine(f, str(e))

    def write(self, shard: Shard, table) -> Path:
        """``table`` (pyarrow) as the shard's file, sealed with its row count and checksum: staged, fsynced,
        renamed into place, folder fsynced."""
        import pyarrow.parquet as pq

        final = self.root / shard.folder / shard.filename
        try:
            final.parent.mkdir(exist_ok=True)
            fd, tmp = temp_sibling(self.root / STAGING / shard.filename)
        except OSError as e:
            raise output_error(e, final.parent, "write to", RESUME_HINT) from None
        try:
            with os.fdopen(fd, "wb") as f:
                pq.write_table(seal(table, shard.id, shard.stage), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise output_error(e, final, "write the shard", RESUME_HINT) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return final

    def clear(self) -> None:
        """``--force``: remove what a screening run wrote here (and nothing else)."""
        doomed = [f for d in (SCORES, PROXY, QUARANTINE) if (self.root / d).is_dir()
                  for f in (self.root / d).iterdir() if f.suffix in (".parquet", ".bad") and f.is_file()]  # fmt: skip
        doomed += [self.root / name for name in ("manifest.json", *SUMMARY_FILES)]
        for f in doomed:
            try:
                f.unlink(missing_ok=True)
            except OSError as e:
                raise output_error(e, f, "remove", "remove it by hand, or use another --out") from None


def _probe_writable(folder: Path) -> None:
    try:
        fd, tmp = temp_sibling(folder / ".write-test")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise output_error(e, folder, "write to") from None


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


__all__ = ["OutDir", "PROXY", "QUARANTINE", "RESUME_HINT", "SCORES", "SETTINGS_KEYS", "STAGING", "Shard", "digest",
           "grid_size", "plan_grid", "plan_rescore", "rescore_size", "seeds_digest"]  # fmt: skip
