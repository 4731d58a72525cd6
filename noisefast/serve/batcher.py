"""Dynamic batching across HTTP requests: ONE worker thread owns the model; the event loop never runs it.

A score/select request becomes rows (`noisefast.batching.Row`: its prompt's condition × each seed). Rows
wait in one FIFO per `Settings.group()`; the worker packs up to the Engine's rows per batch for those settings
(`Engine.batch_size_for`: the ``--batch-size`` engine option, else the model's) of a group — rows of
different requests and prompts share the UNet batch — through ``engine.scorer(settings)`` (the same
`RowScorer` select and screen use) and cuts the scores back per request with `split_scores`. A group's
batch goes when it is full or its oldest row has waited ``max_wait_s``; among ready groups the one whose
oldest row is oldest goes first, so no group starves another. Optimize/generate (and prompt encoding)
are *tasks*: they run on the same thread, in the same oldest-first order.

Results reach the event loop through ``loop.call_soon_threadsafe``. A request that times out or whose
client disconnects is cancelled: its rows still queued are dropped before they reach the UNet, and its rows
in the running batch leave it at the next UNet call — a batch or task with nothing left to do stops there
(`noisefast.serve.cancel`). A batch that raises is retried request by request, so a bad request fails alone
and its batch-mates succeed.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch

from noisefast.batching import Row, split_scores
from noisefast.errors import NoisefastError
from noisefast.serve.cancel import Cancelled, Watch, Watched


class QueueFull(NoisefastError):
    http_status = 429

    def __init__(self, msg: str, retry_after: float):
        super().__init__(msg)
        self.retry_after = retry_after


class RequestTimeout(NoisefastError):
    http_status = 504


class ClientGone(NoisefastError):
    http_status = 499  # nobody reads it: the client left


class ShuttingDown(NoisefastError):
    http_status = 503


@dataclass(eq=False)
class _Work:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    abandoned: bool = False  # its waiter stopped waiting (timeout, disconnect)

    def resolve(self, value=None, error: BaseException | None = None) -> None:
        def put():
            if self.future.done():
                return
            if self.abandoned:  # nobody waits for it (504, client gone): no "exception never retrieved"
                self.future.cancel()
            else:
                self.future.set_exception(error) if error is not None else self.future.set_result(value)

        try:
            self.loop.call_soon_threadsafe(put)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


@dataclass(eq=False)
class ScoreRequest(_Work):
    serial: int = 0
    prompt: str = ""
    negative_prompt: str | None = None
    settings: object = None
    seeds: list[int] = field(default_factory=list)
    cond: object = None
    pending: int = 0  # rows still in a queue
    filled: int = 0
    scores: torch.Tensor | None = None
    failed: bool = False


@dataclass(eq=False)
class Task(_Work):
    fn: Callable = None  # fn(is_cancelled) -> result, run on the worker thread


class Batcher:
    """The worker thread and its queues; see the module docstring."""

    def __init__(self, engine, *, max_wait_s: float = 0.005, max_queue_rows: int = 4096, max_queue_tasks: int = 64,
                 metrics=None):  # fmt: skip
        if max_wait_s < 0 or max_queue_rows < 1 or max_queue_tasks < 1:
            raise ValueError("max_queue_rows, max_queue_tasks must be ≥ 1 and max_wait_s ≥ 0")
        self.engine, self.max_wait_s = engine, max_wait_s
        self.max_queue_rows, self.max_queue_tasks = max_queue_rows, max_queue_tasks
        self.metrics = metrics
        self._cv = threading.Condition()
        self._incoming: deque[ScoreRequest] = deque()  # not yet encoded
        self._groups: dict[tuple, deque] = {}  # group → deque[(request, seed)]
        self._tasks: deque[Task] = deque()
        self._scorers: dict[tuple, object] = {}
        self._rows: dict[tuple, int] = {}  # group → rows per UNet batch (Engine.batch_size_for its settings)
        self._served: dict[tuple | None, float] = {}  # queue (None: tasks) → when it last went
        self._queued_rows = 0
        self._serial = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._watch = Watch()  # what the model's thread runs: cancelled rows leave it at the next UNet call
        self.rows_done = 0
        self.batches_done = 0

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> "Batcher":
        self._thread = threading.Thread(target=self._loop, name="noisefast-model", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Refuse new work, finish what is queued, join the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def queue_rows(self) -> int:
        return self._queued_rows

    def queue_depth(self) -> int:
        return len(self._tasks) + len(self._incoming) + self._queued_rows

    # --- the event loop's side -----------------------------------------------------------------------------
    async def score(self, prompt: str, seeds: list[int], settings, *, negative_prompt: str | None = None,
                    timeout: float = 60.0, client_gone: Callable[[], Awaitable] | None = None) -> torch.Tensor:  # fmt: skip
        """s(ε) for each seed under ``prompt`` (in the order given), scored in shared batches; [K] float32."""
        loop = asyncio.get_running_loop()
        req = ScoreRequest(loop, loop.create_future(), serial=next(self._serial), prompt=prompt,
                           negative_prompt=negative_prompt, settings=settings, seeds=list(seeds))  # fmt: skip
        req.scores = torch.empty(len(req.seeds), dtype=torch.float32)
        with self._cv:
            self._admit()
            if self._queued_rows + len(req.seeds) > self.max_queue_rows:
                raise QueueFull(f"the queue holds {self._queued_rows} rows; {len(req.seeds)} more would pass its "
                                f"limit of {self.max_queue_rows}", self._retry_after())  # fmt: skip
            req.pending = len(req.seeds)
            self._queued_rows += req.pending
            self._incoming.append(req)
            self._cv.notify_all()
        return await self._wait(req, timeout, client_gone)

    async def run(self, fn: Callable, *, timeout: float = 60.0,
                  client_gone: Callable[[], Awaitable] | None = None):  # fmt: skip
        """``fn(is_cancelled)`` on the worker thread (which owns the model); its result."""
        loop = asyncio.get_running_loop()
        task = Task(loop, loop.create_future(), fn=fn)
        with self._cv:
            self._admit()
            if len(self._tasks) >= self.max_queue_tasks:
                raise QueueFull(f"{len(self._tasks)} tasks are queued (limit {self.max_queue_tasks})", self._retry_after())
            self._tasks.append(task)
            self._cv.notify_all()
        return await self._wait(task, timeout, client_gone)

    def _admit(self) -> None:
        if self._stopping or self._thread is None or not self._thread.is_alive():
            raise ShuttingDown("the server is shutting down")

    def _retry_after(self) -> float:
        rows = max(self._rows.values(), default=1)
        return max(1.0, round(self._queued_rows / rows * 0.05, 1))

    def cancel(self, work: _Work) -> None:
        """Drop ``work``'s queued rows (they never reach the UNet); a running task sees ``is_cancelled()``."""
        with self._cv:
            if work.cancelled:
                return
            work.cancelled = True
            if isinstance(work, ScoreRequest) and work.pending:
                self._queued_rows -= work.pending
                if self.metrics is not None:
                    self.metrics.rows_dropped.inc(work.pending)
                work.pending = 0

    async def _wait(self, work: _Work, timeout: float, client_gone: Callable[[], Awaitable] | None) -> object:
        """The work's result, or its cancellation when the time runs out or ``client_gone()`` completes.

        Event-driven (no polling): with many requests waiting, the event loop stays idle and the worker
        thread keeps the GIL between UNet ops.
        """
        gone = asyncio.ensure_future(client_gone()) if client_gone is not None else None
        try:
            done, _ = await asyncio.wait([w for w in (work.future, gone) if w is not None], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if work.future in done:
                return work.future.result()
            work.abandoned = True
            self.cancel(work)
            reason = "disconnect" if gone is not None and gone in done else "timeout"
            if self.metrics is not None:
                self.metrics.cancelled.labels(reason).inc()
            if reason == "disconnect":
                raise ClientGone("the client disconnected")
            raise RequestTimeout(f"the request did not finish within {timeout:g} s (--timeout); its work was stopped")
        except asyncio.CancelledError:
            work.abandoned = True
            self.cancel(work)
            raise
        finally:
            if gone is not None and not gone.done():
                gone.cancel()

    # --- the worker thread -------------------------------------------------------------------------------
    def _loop(self) -> None:
        self._watch.owner = threading.get_ident()
        while True:
            with self._cv:
                while not (self._incoming or self._tasks or self._queued_rows or self._stopping):
                    self._cv.wait()
                incoming = list(self._incoming)
                self._incoming.clear()
            for req in incoming:
                self._encode(req)
            with self._cv:
                work = self._next()
                if work is None:
                    if self._stopping and not (self._incoming or self._tasks or self._groups):
                        return
                    continue
            kind, item = work
            if kind == "task":
                self._run_task(item)
            else:
                self._score(*item)

    def _encode(self, req: ScoreRequest) -> None:
        if req.cancelled:
            return
        try:
            req.cond = self.engine.condition(req.prompt, req.negative_prompt, req.settings)
            rows = self.engine.batch_size_for(req.settings)
        except Exception as e:
            self._fail(req, e)
            return
        with self._cv:
            if req.cancelled:
                return
            g = req.settings.group()
            self._rows.setdefault(g, rows)
            self._groups.setdefault(g, deque()).extend((req, s) for s in req.seeds)

    def _next(self):
        """Under the lock: the next task or batch, oldest first; waits (briefly) while nothing is ready."""
        now = time.monotonic()
        for g in [g for g, q in self._groups.items() if not q or q[0][0].cancelled]:
            self._drop_cancelled(g)
        # a queue's turn: its oldest item's arrival, or its last service if later — oldest first while the
        # load is light, round-robin between queues that are always busy (no group starves another)
        ready, wake = [], None
        for g, q in self._groups.items():
            if not q:
                continue
            head = q[0][0].enqueued
            if len(q) >= self._rows[g] or now - head >= self.max_wait_s or self._stopping:
                ready.append((max(head, self._served.get(g, 0.0)), head, g))
            else:
                wake = min(wake or 1e18, head + self.max_wait_s)
        if self._tasks:
            ready.append((max(self._tasks[0].enqueued, self._served.get(None, 0.0)), self._tasks[0].enqueued, None))
        if ready:
            g = min(ready, key=lambda r: r[:2])[2]
            self._served[g] = now
            if len(self._served) > 4 * len(self._groups) + 64:
                self._served = {k: v for k, v in self._served.items() if k is None or k in self._groups}
            if g is None:
                return "task", self._tasks.popleft()
            return "rows", (g, self._take(g))
        if self._incoming or self._stopping:
            return None
        self._cv.wait(None if wake is None else max(wake - now, 0.0))
        return None

    def _drop_cancelled(self, g) -> None:
        q = self._groups[g]
        while q and q[0][0].cancelled:
            q.popleft()
        if not q:
            del self._groups[g]

    def _take(self, g) -> list[tuple[ScoreRequest, int]]:
        q, taken = self._groups[g], []
        while q and len(taken) < self._rows[g]:
            req, seed = q.popleft()
            if req.cancelled:
                continue
            req.pending -= 1
            self._queued_rows -= 1
            taken.append((req, seed))
        if not q:
            del self._groups[g]
        return taken

    def _scorer(self, g, settings):
        scorer = self._scorers.get(g)
        if scorer is None:
            scorer = self._scorers[g] = self.engine.scorer(settings)
            if scorer.chain is None:  # an eager chain: each UNet call asks which rows are still wanted
                scorer.den = Watched(scorer.den, self._watch)
        return scorer

    def _run_rows(self, g, settings, rows: list[Row]) -> torch.Tensor:
        scorer = self._scorer(g, settings)
        with self._watch.rows(scorer._padded([r.key for r in rows]), scorer.buckets):
            return scorer(rows)

    def _score(self, g, taken: list[tuple[ScoreRequest, int]]) -> None:
        if not taken:
            return
        rows = [Row(req.serial, req, req.cond, seed) for req, seed in taken]
        t = time.perf_counter()
        try:
            scores, error = self._run_rows(g, taken[0][0].settings, rows), None
        except Exception as e:
            scores, error = None, e
        self.rows_done += len(rows)  # counted before any answer goes out
        self.batches_done += 1
        left = sum(r.key.cancelled for r in rows)  # cancelled while their batch ran: they left it
        if self.metrics is not None:
            self.metrics.observe_batch(len(rows), time.perf_counter() - t)
            self.metrics.rows_left.inc(left)
            if isinstance(error, Cancelled):
                self.metrics.aborted.labels("batch").inc()
        if error is None:
            self._deliver(rows, scores)
            return
        reqs = [q for q in dict.fromkeys(r.key for r in rows) if not q.cancelled]
        if isinstance(error, Cancelled) or len(reqs) <= 1:
            for req in reqs or dict.fromkeys(r.key for r in rows):
                self._fail(req, error)
            return
        for req in reqs:  # find the culprit: each request's rows alone; the others still get their scores
            mine = [r for r in rows if r.key is req]
            try:
                self._deliver(mine, self._run_rows(g, req.settings, mine))
            except Exception as e:
                self._fail(req, e)

    def _deliver(self, rows: list[Row], scores: torch.Tensor) -> None:
        for part in split_scores(rows, scores):
            req: ScoreRequest = part.key
            if req.failed:
                continue
            n = len(part.seeds)
            req.scores[req.filled : req.filled + n] = part.scores
            req.filled += n
            if req.filled == len(req.seeds):
                req.resolve(req.scores)

    def _fail(self, req: ScoreRequest, e: BaseException) -> None:
        req.failed = True
        self.cancel(req)
        req.resolve(error=e)

    def _run_task(self, task: Task) -> None:
        if task.cancelled:
            return
        try:
            with self._watch.task(task, self.engine):
                result = task.fn(lambda: task.cancelled)
            task.resolve(result)
        except Exception as e:
            if task.cancelled and self.metrics is not None:
                self.metrics.aborted.labels("task").inc()
            task.resolve(error=e)


__all__ = ["Batcher", "ClientGone", "QueueFull", "RequestTimeout", "ShuttingDown"]
