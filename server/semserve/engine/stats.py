"""Per-model counters, kept as plain numbers for the Info RPC and mirrored to Prometheus."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily

BATCHES = Counter("semserve_batches", "Forward passes run", ["model"])
ITEMS = Counter("semserve_items", "Texts or pairs computed", ["model"])
TOKENS = Counter("semserve_tokens", "Real tokens computed", ["model"])
PADDED_TOKENS = Counter("semserve_padded_tokens", "Tokens of padded batches, padding included", ["model"])
REJECTED = Counter("semserve_rejected_requests", "Requests refused because the queue was full", ["model"])
BATCH_SIZE = Histogram(
    "semserve_batch_size", "Items per forward pass", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
)
BATCH_SECONDS = Histogram(
    "semserve_batch_seconds",
    "Wall time of one forward pass",
    ["model"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)


@dataclass
class ModelStats:
    model: str
    batches: int = 0
    items: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    rejected_requests: int = 0

    def record_rejection(self) -> None:
        self.rejected_requests += 1
        REJECTED.labels(self.model).inc()

    def record_batch(self, size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        self.batches += 1
        self.items += size
        self.tokens += real_tokens
        self.padded_tokens += padded_tokens
        BATCHES.labels(self.model).inc()
        ITEMS.labels(self.model).inc(size)
        TOKENS.labels(self.model).inc(real_tokens)
        PADDED_TOKENS.labels(self.model).inc(padded_tokens)
        BATCH_SIZE.labels(self.model).observe(size)
        BATCH_SECONDS.labels(self.model).observe(seconds)


class FrontendCollector:
    """RPCs answered per front-end process, as the front ends last reported them to the engine."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def collect(self):
        family = CounterMetricFamily(
            "semserve_frontend_requests", "RPCs answered by each front-end process since it started", labels=["frontend"]
        )
        for counters in self._engine.frontends:
            family.add_metric([str(counters.index)], counters.requests)
        yield family
