"""Shared pieces of the serve tests: the digits engine, an in-process server, a gate that holds the model's thread."""

import asyncio
import contextlib
import threading

import httpx
import pytest
import torch

from noisefast.config import EngineConfig
from noisefast.serve.app import create_app
from noisefast.serve.service import ServeConfig, Service

P3, P7 = "a handwritten digit three", "a handwritten digit seven"
FAST = {"steps": 2, "inversion_steps": 2}


@pytest.fixture(scope="module")
def engine():
    from noisefast.pipeline import Engine

    torch.set_num_threads(1)
    return Engine.from_pretrained("builtin:digits")


@contextlib.asynccontextmanager
async def served(engine, headers=None, batch_size=None, **options):
    """An in-process server over ``engine``; ``batch_size``: rows per UNet batch (the engine option --batch-size)."""
    config = ServeConfig(engine=EngineConfig(batch_size=batch_size), **({"warmup": False, "max_wait_ms": 2.0} | options))
    svc = Service(config, engine).load()
    await svc.warm_up()
    app = create_app(service=svc)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t", headers=headers,
                                     timeout=30) as client:  # fmt: skip
            client.service = svc
            yield client
    finally:
        svc.stop()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class Gate:
    """Holds the model's worker at the start of a batch until opened; counts the rows of the batches that went."""

    def __init__(self, batcher):
        self.open_, self.entered, self.rows, self.calls = threading.Event(), threading.Event(), 0, 0
        inner = batcher._run_rows

        def run_rows(g, settings, rows):
            self.entered.set()
            self.open_.wait(20)
            self.rows, self.calls = self.rows + len(rows), self.calls + 1
            return inner(g, settings, rows)

        batcher._run_rows = run_rows

    async def wait_entered(self):
        while not self.entered.is_set():
            await asyncio.sleep(0.005)


async def hold_worker(c, seeds):
    """A first /v1/score request of ``seeds`` whose batch holds the worker inside the UNet until ``gate.open_``
    is set: (gate, the request's task). What is posted next waits in the queue."""
    gate = Gate(c.service.batcher)
    first = asyncio.create_task(c.post("/v1/score", json=body(seeds=list(seeds))))
    await gate.wait_entered()
    return gate, first


def body(prompt=P3, seeds=None, **kw):
    return {"prompt": prompt, "seeds": list(range(6)) if seeds is None else seeds, "settings": FAST} | kw
