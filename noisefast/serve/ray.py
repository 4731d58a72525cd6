"""Ray Serve: the same FastAPI app (`noisefast.serve.app`) as a Ray Serve deployment with replicas.

    serve run noisefast.serve.ray:app                       # builtin:digits, one replica
    from noisefast.serve.ray import ray_app
    serve.run(ray_app("stabilityai/sdxl-turbo", num_replicas=2, ray_actor_options={"num_gpus": 1}))

Each replica loads its own model once (in the replica's process) and runs the same `Service`: one
worker thread owning the model, dynamic batching of the replica's concurrent requests, the same limits,
key check and metrics. Ray routes requests between replicas; ``max_ongoing_requests`` bounds each.
"""

from __future__ import annotations

from dataclasses import fields

from noisefast.config import EngineConfig
from noisefast.serve.service import ServeConfig


def ray_app(model: str | EngineConfig = "builtin:digits", *, num_replicas: int = 1,
            ray_actor_options: dict | None = None, max_ongoing_requests: int = 256, name: str = "noisefast",
            **options):  # fmt: skip
    """A bound Ray Serve application (pass to ``serve.run``); ``model``: a model spec or a whole `EngineConfig`
    (what each replica builds its Engine from); ``options``: the other `ServeConfig` fields."""
    from ray import serve

    from noisefast.serve.app import create_app

    known = {f.name for f in fields(ServeConfig)} - {"engine"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"ray_app: unknown options {unknown} (ServeConfig fields: {sorted(known)})")
    engine = model if isinstance(model, EngineConfig) else EngineConfig(model=model)
    config = ServeConfig(engine=engine, **options)
    # The app is pickled into each replica with its own (unloaded) Service; Ray Serve runs the ASGI lifespan
    # there, which loads the model once per replica and stops its worker thread at shutdown.
    fastapi_app = create_app(config)

    @serve.deployment(name=name, num_replicas=num_replicas, ray_actor_options=ray_actor_options or {"num_cpus": 1},
                      max_ongoing_requests=max_ongoing_requests)  # fmt: skip
    @serve.ingress(fastapi_app)
    class NoisefastDeployment:
        pass

    return NoisefastDeployment.bind()


def __getattr__(name: str):
    if name == "app":  # `serve run noisefast.serve.ray:app`, built on first access (not at import)
        return ray_app()
    raise AttributeError(name)


__all__ = ["ray_app"]
