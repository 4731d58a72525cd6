"""The same shards on a Ray cluster (``--ray`` local, ``--ray ADDRESS`` a running cluster): the ``[ray]`` extra.

One `ScreenWorker` actor per GPU (``num_gpus=1``) — or, without GPUs, per ``threads`` CPUs — loads the
Engine once and scores whole shards with the very function the in-process run uses (`score_shard`).
Shards are handed out by a `ray.util.ActorPool`: the driver submits shard tasks, the pool gives each to
the next idle actor, and the driver takes results as they finish (``get_next_unordered``). The driver
stays the only process that writes files (the exactly-once protocol of `noisefast.screen.shards`), so no
shared filesystem is needed and nothing about the protocol depends on Ray; Ray Data checkpointing is not
used. An actor that dies is restarted and its shard retried (``max_restarts``/``max_task_retries``); a
shard lost with the driver is simply scored again by the next run.

On a remote cluster every node needs noisefast (and the model, for a local folder) installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from noisefast.errors import BackendUnavailableError, NoisefastError
from noisefast.screen.runner import LocalExecutor, ShardTask, score_shard
from noisefast.screen.shards import Shard


def import_ray():
    try:
        import ray
        from ray.util import ActorPool  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("--ray needs Ray: pip install 'noisefast[ray]' (or run without --ray)") from None
    return ray


class ScreenWorker:
    """A Ray actor's body: one Engine, built once from the driver's `EngineConfig` (sent as a dict); scores shard
    tasks."""

    def __init__(self, config: dict):
        from noisefast.config import EngineConfig
        from noisefast.pipeline import Engine

        self.engine = Engine.from_config(EngineConfig.from_dict(config))

    def describe(self, overrides: dict) -> tuple[dict, dict]:
        return LocalExecutor(self.engine).describe(overrides)

    def score(self, task: ShardTask) -> tuple[str, np.ndarray]:
        return task["id"], score_shard(self.engine, task)


class RayExecutor:
    """Shards scored by a pool of `ScreenWorker` actors."""

    name = "ray"

    def __init__(self, address: str | None, config, *, workers: int | None = None, max_tasks: int | None = None):
        ray = import_ray()
        from ray.util import ActorPool

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            try:
                if address in (None, "", "local"):
                    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
                else:
                    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            except Exception as e:  # ConnectionError, RuntimeError, ...: Ray's own wording says why
                raise BackendUnavailableError(f"cannot start or reach Ray ({address or 'local'}): {e}") from None
            self.started = True
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        use_gpu = gpus > 0 and not (config.device or "").startswith("cpu")
        cpus_each = config.planned_threads() or 1  # an actor's CPUs = the threads its Engine will use
        n = workers or (gpus if use_gpu else max(1, int(res.get("CPU", 1)) // cpus_each))
        n = max(1, min(n, max_tasks or n))
        opts = {"num_gpus": 1, "num_cpus": 1} if use_gpu else {"num_cpus": cpus_each}
        if use_gpu and config.device is not None:
            config = config.replace(device="cuda")  # each actor sees its one GPU as cuda:0
        if not use_gpu and config.threads is None:
            config = config.replace(threads=cpus_each)  # the actor's reserved CPUs, not torch's guess of the node's
        remote = ray.remote(max_restarts=2, max_task_retries=2, **opts)(ScreenWorker)
        self.actors = [remote.remote(config.as_dict()) for _ in range(n)]
        self.pool = ActorPool(self.actors)
        self.workers = n
        self.resources = {"gpus_per_actor": opts.get("num_gpus", 0), "cpus_per_actor": opts["num_cpus"]}

    def _get(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, NoisefastError):
                raise cause from None
            raise
        except self.ray.exceptions.RayActorError as e:  # the Engine could not load in the actor
            raise BackendUnavailableError(f"a Ray screening actor died: {str(e).splitlines()[0]}") from None

    def describe(self, overrides: dict) -> tuple[dict, dict]:
        return self._get(self.actors[0].describe.remote(overrides))

    def run(self, tasks: Iterable[tuple[Shard, ShardTask]],
            on_rows: Callable[[int], None]) -> Iterator[tuple[Shard, np.ndarray]]:  # fmt: skip
        """Results as shards finish (any order); ``on_rows(shard rows)`` per finished shard."""
        pending: dict[str, Shard] = {}
        for shard, task in tasks:
            pending[shard.id] = shard
            self.pool.submit(lambda actor, t: actor.score.remote(t), task)
        while self.pool.has_next():
            try:
                sid, scores = self.pool.get_next_unordered()
            except self.ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, NoisefastError):
                    raise cause from None
                raise
            shard = pending.pop(sid)
            on_rows(shard.rows)
            yield shard, scores

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            try:
                self.ray.kill(a)
            except Exception:
                pass
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False


__all__ = ["RayExecutor", "ScreenWorker", "import_ray"]
