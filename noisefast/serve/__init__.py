"""HTTP serving (``noisefast serve``): a FastAPI app over one Engine whose model one worker thread owns,
with dynamic batching of concurrent requests' rows (`noisefast.serve.batcher`), a seed bank, limits,
API keys and Prometheus metrics. ``pip install noisefast[serve]``; Ray Serve: `noisefast.serve.ray`.
"""

from noisefast.serve.service import ServeConfig, Service


def create_app(*args, **kwargs):
    """`noisefast.serve.app.create_app` (imported lazily: FastAPI is an optional dependency)."""
    from noisefast.serve.app import create_app as make

    return make(*args, **kwargs)


__all__ = ["ServeConfig", "Service", "create_app"]
