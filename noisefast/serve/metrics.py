"""Prometheus metrics of one server (its own registry, so several apps in one process never collide).

    noisefast_requests_total{endpoint, status}      requests answered
    noisefast_request_seconds{endpoint}             latency histogram
    noisefast_queue_rows / noisefast_queue_depth    rows waiting / rows + tasks + unencoded requests
    noisefast_batch_rows                            rows per UNet batch (histogram)
    noisefast_batch_seconds                         seconds per UNet batch (histogram)
    noisefast_rows_total / noisefast_rows_dropped_total   rows scored / dropped (cancelled before the UNet)
    noisefast_rows_per_second                       rows scored over the last 10 s, per second
    noisefast_requests_cancelled_total{reason}      requests stopped: timeout (504) or disconnect
    noisefast_rows_left_total                       rows that left a running batch (their request cancelled)
    noisefast_work_aborted_total{kind}              batches / tasks stopped at a UNet call (nothing left wanted)
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
RATE_WINDOW_S = 10.0


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("noisefast_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("noisefast_request_seconds", "request latency", ["endpoint"], buckets=LATENCY_BUCKETS,
                                 registry=r)  # fmt: skip
        self.queue_rows = Gauge("noisefast_queue_rows", "rows waiting for the UNet", registry=r)
        self.queue_depth = Gauge("noisefast_queue_depth", "rows, tasks and requests waiting", registry=r)
        self.batch_rows = Histogram("noisefast_batch_rows", "rows per UNet batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("noisefast_batch_seconds", "seconds per UNet batch", buckets=LATENCY_BUCKETS,
                                       registry=r)  # fmt: skip
        self.rows = Counter("noisefast_rows", "rows scored", registry=r)
        self.rows_dropped = Counter("noisefast_rows_dropped", "queued rows dropped (cancelled, timed out, client gone)",
                                    registry=r)  # fmt: skip
        self.rows_per_second = Gauge("noisefast_rows_per_second", f"rows scored per second over the last "
                                     f"{RATE_WINDOW_S:g} s", registry=r)  # fmt: skip
        self.rows_per_second.set_function(self._rate)
        self.cancelled = Counter("noisefast_requests_cancelled", "requests stopped by a timeout or a disconnect",
                                 ["reason"], registry=r)  # fmt: skip
        self.rows_left = Counter("noisefast_rows_left", "rows that left a running batch (request cancelled)", registry=r)
        self.aborted = Counter("noisefast_work_aborted", "batches or tasks stopped at a UNet call", ["kind"], registry=r)
        self.ready = Gauge("noisefast_ready", "1 once the model is loaded and warm", registry=r)
        self._recent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def track_batcher(self, batcher) -> None:
        self.queue_rows.set_function(batcher.queue_rows)
        self.queue_depth.set_function(batcher.queue_depth)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)
        self.rows.inc(rows)
        with self._lock:
            self._recent.append((time.monotonic(), rows))

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["Metrics"]
