"""Scoring shards: one function (`score_shard`) over the shared row packing, and the in-process executor.

`score_shard` is what every executor runs, in process or inside a Ray actor: the shard's (prompt, negative prompt,
seeds) items go through `Engine.score_stream` — the Engine's cached conditions and its `RowScorer`, so rows of
different prompts share UNet batches, and a shard's batches are the same whoever scores it (its scores are
reproducible bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from noisefast.screen.shards import Shard

# A shard as plain data (what crosses a process boundary): stage, [(prompt, negative_prompt, seeds)], settings
ShardTask = dict


def shard_task(shard: Shard, settings: dict) -> ShardTask:
    return {
        "id": shard.id,
        "items": [(it.prompt, it.negative_prompt, list(seeds)) for it, seeds in zip(shard.items, shard.seeds)],
        "settings": dict(settings),
    }


def score_shard(engine, task: ShardTask, on_rows: Callable[[int], None] | None = None) -> np.ndarray:
    """s(ε) of every row of ``task`` (item-major, seed order) as float32 [rows]; ``on_rows(n)`` per batch."""
    s = engine.settings(**task["settings"])
    items = [(i, p, neg, seeds) for i, (p, neg, seeds) in enumerate(task["items"])]
    total = sum(len(seeds) for *_, seeds in items)
    out = np.empty(total, dtype=np.float32)
    pos = 0
    progress = None if on_rows is None else (lambda done, _total: on_rows(done))
    for part in engine.score_stream(items, settings=s, progress=progress):
        n = len(part.seeds)
        out[pos : pos + n] = part.scores.numpy()
        pos += n
    if pos != total:  # score_stream yields every row once, in order: anything else is a bug
        raise RuntimeError(f"shard {task['id']}: {pos} scores for {total} rows")
    return out


class LocalExecutor:
    """Shards scored one after another by the Engine of this process."""

    name = "in-process"

    def __init__(self, engine):
        self.engine = engine

    def describe(self, overrides: dict) -> tuple[dict, dict]:
        """The model facts and the resolved settings (a dict, batch size included) for ``overrides``."""
        s = self.engine.settings(**overrides)
        rows = self.engine.batch_size_for(s)  # refuses a batch that cannot fit before any work
        return self.engine.describe(), s.as_dict() | {"batch_size": rows}  # the rows per batch in effect

    def run(self, tasks: Iterable[tuple[Shard, ShardTask]],
            on_rows: Callable[[int], None]) -> Iterator[tuple[Shard, np.ndarray]]:  # fmt: skip
        """Scores in shard order; ``on_rows(n)`` as rows finish (``n`` new rows)."""
        for shard, task in tasks:
            last = [0]

            def advance(done: int) -> None:
                on_rows(done - last[0])
                last[0] = done

            yield shard, score_shard(self.engine, task, advance)

    def close(self) -> None:
        pass


__all__ = ["LocalExecutor", "ShardTask", "score_shard", "shard_task"]
