"""The seed bank: a screening result folder (``noisefast screen``) loaded once, answering `select` at once.

Contract (written by the screening job):

    PATH/manifest.json      {"model": ..., "settings": {height, width, steps, inversion_steps, guidance_scale,
                             inversion_guidance_scale}, "settings_hash": ...}
    PATH/scores/*.parquet   columns prompt_id, prompt, seed (int64), stability (float64)

`SeedBank.lookup(prompt, seeds, settings)` gives the stored scores when the bank holds every requested seed
of that prompt under the same settings (otherwise None: the server computes). With ``any_prompt``
(`--bank-any-prompt`), `lookup_any` ranks seeds of an unseen prompt by their mean stability over the
bank's prompts — worth it only where stability transfers across prompts (see bench/seed_transfer.py).
The server reads only the path given on its command line, never one from a request. Only shards that verify
(row count and checksum: `noisefast.screen.integrity.read_stage`) are loaded; ``complete`` says whether the run
was finished, and an unfinished bank answers `lookup` (exact for the seeds it holds) but not `lookup_any`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from noisefast.errors import InputError

SETTINGS_KEYS = ("height", "width", "steps", "inversion_steps", "guidance_scale", "inversion_guidance_scale")


class SeedBank:
    def __init__(self, model: str, settings: dict, prompts: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.model = model
        self.settings = {k: settings[k] for k in SETTINGS_KEYS}
        self.prompts = prompts  # prompt → (seeds sorted ascending int64, stability float64)
        self._any: tuple[np.ndarray, np.ndarray] | None = None
        self.status = None  # issue 23: the screening folder's StageStatus (set by `load`)

    @property
    def complete(self) -> bool | None:
        """Whether the screening run was finished (None: unknown, an older manifest); an unfinished bank still
        answers a prompt it holds every requested seed of, but ranks no unseen prompt across its prompts."""
        return None if self.status is None else self.status.complete

    @classmethod
    def load(cls, path) -> "SeedBank":
        root = Path(path)
        try:
            manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"--bank {root}: cannot read manifest.json ({e})") from None
        missing = [k for k in ("model", "settings") if k not in manifest]
        missing += [f"settings.{k}" for k in SETTINGS_KEYS if k not in manifest.get("settings", {})]
        if missing:
            raise InputError(f"--bank {root}: manifest.json lacks {', '.join(missing)}")
        # --- issue 23: the screening job's own reader — verified shards only, and how complete the run is ---
        from noisefast.screen.integrity import read_stage

        got = read_stage(root, "scores", columns=["prompt", "seed", "stability"], manifest=manifest)
        if got.table is None:
            raise InputError(f"--bank {root}: no verified scores/*.parquet files"
                             + (f" ({got.status.describe()})" if got.status.bad else ""))  # fmt: skip
        parts: dict[str, list] = {}
        d = got.table.to_pydict()
        for p, s, v in zip(d["prompt"], d["seed"], d["stability"]):
            parts.setdefault(p, []).append((int(s), float("nan") if v is None else float(v)))
        # --- end issue 23 ---
        prompts = {}
        for p, rows in parts.items():
            by_seed = dict(rows)  # a seed written twice (a resumed shard): the last value wins
            seeds = np.fromiter(sorted(by_seed), dtype=np.int64, count=len(by_seed))
            prompts[p] = (seeds, np.array([by_seed[int(s)] for s in seeds], dtype=np.float64))
        bank = cls(str(manifest["model"]), manifest["settings"], prompts)
        bank.status = got.status  # issue 23: complete / shards_missing / untrusted files (StageStatus)
        return bank

    def __len__(self) -> int:
        return sum(len(s) for s, _ in self.prompts.values())

    def matches(self, settings) -> bool:
        return all(float(getattr(settings, k)) == float(self.settings[k]) for k in SETTINGS_KEYS)

    def lookup(self, prompt: str, seeds: list[int], settings) -> torch.Tensor | None:
        """Stored s(ε) of each seed (in order), or None unless the bank holds them all for these settings."""
        if prompt not in self.prompts or not self.matches(settings):
            return None
        return _pick(*self.prompts[prompt], seeds)

    def lookup_any(self, seeds: list[int], settings) -> torch.Tensor | None:
        """Each seed's mean stability over the bank's prompts (prompt-agnostic ranking), or None."""
        if not self.matches(settings) or not self.prompts or self.complete is False:
            return None
        if self._any is None:
            all_seeds = np.unique(np.concatenate([s for s, _ in self.prompts.values()]))
            total, count = np.zeros(len(all_seeds)), np.zeros(len(all_seeds))
            for s, v in self.prompts.values():
                idx = np.searchsorted(all_seeds, s)
                ok = np.isfinite(v)
                np.add.at(total, idx[ok], v[ok])
                np.add.at(count, idx[ok], 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                self._any = (all_seeds, np.where(count > 0, total / np.maximum(count, 1), np.nan))
        return _pick(*self._any, seeds)


def _pick(bank_seeds: np.ndarray, values: np.ndarray, seeds: list[int]) -> torch.Tensor | None:
    want = np.asarray(seeds, dtype=np.int64)
    idx = np.searchsorted(bank_seeds, want)
    if (idx >= len(bank_seeds)).any() or (bank_seeds[np.minimum(idx, len(bank_seeds) - 1)] != want).any():
        return None
    return torch.from_numpy(values[idx].astype(np.float32))


__all__ = ["SETTINGS_KEYS", "SeedBank"]
