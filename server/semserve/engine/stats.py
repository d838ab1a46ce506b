"""Per-model counters, kept as plain numbers for the Info RPC and mirrored to Prometheus, and the
collectors that report what is read at scrape time: queues, collections, and the per-RPC
metrics every front end reports (frontend/call_metrics.py)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from semserve.frontend.call_metrics import BUCKETS as CALL_BUCKETS

BATCHES = Counter("semserve_batches", "Forward passes run", ["model"])
ITEMS = Counter("semserve_items", "Texts or pairs computed", ["model"])
TOKENS = Counter("semserve_tokens", "Real tokens computed", ["model"])
PADDED_TOKENS = Counter("semserve_padded_tokens", "Tokens of padded batches, padding included", ["model"])
REJECTED = Counter("semserve_rejected_requests", "Requests refused because the queue was full", ["model"])
BATCH_SIZE = Histogram(
    "semserve_batch_size", "Items per forward pass", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
)
_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
BATCH_SECONDS = Histogram("semserve_batch_seconds", "Wall time of one forward pass", ["model"], buckets=_SECONDS_BUCKETS)
QUEUE_SECONDS = Histogram(
    "semserve_queue_seconds", "Time a request waited in its model's queue before its first batch", ["model"],
    buckets=_SECONDS_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "semserve_inference_seconds", "Time from a request's first batch to its last", ["model"], buckets=_SECONDS_BUCKETS,
)
SEARCH_SECONDS = Histogram(
    "semserve_search_seconds", "Scoring and top-k of one Search call's queries", ["collection"],
    buckets=_SECONDS_BUCKETS,
)
COMMIT_SECONDS = Histogram(
    "semserve_store_commit_seconds", "One group commit of a collection: its SQLite transaction and fsync",
    ["collection"], buckets=_SECONDS_BUCKETS,
)
COMMIT_FAILURES = Counter(
    "semserve_store_commit_failures", "Group commits that failed, by the status their writers got",
    ["collection", "code"],
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


def record_request(model: str, queue_s: float, inference_s: float) -> None:
    QUEUE_SECONDS.labels(model).observe(queue_s)
    INFERENCE_SECONDS.labels(model).observe(inference_s)


def _histogram(family: HistogramMetricFamily, labels: list[str], buckets: list[int], total: float) -> None:
    cumulative, running = [], 0
    for bound, count in zip(CALL_BUCKETS, buckets):
        running += count
        cumulative.append((repr(float(bound)), running))
    family.add_metric(labels, [*cumulative, ("+Inf", running)], total)


class FrontendCollector:
    """What the front ends last reported: RPCs per process, and their per-RPC metrics added up."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def collect(self):
        per_process = CounterMetricFamily(
            "semserve_frontend_requests", "RPCs answered by each front-end process since it started", labels=["frontend"]
        )
        by_status: dict[tuple[str, str], int] = {}
        latency: dict[str, list] = {}
        tokenize: dict[str, list] = {}
        merged: dict[str, list[int]] = {}
        for counters in self._engine.frontends:
            per_process.add_metric([str(counters.index)], counters.requests)
            metrics = counters.metrics or {}
            for model, (engine_calls, calls) in metrics.get("merged", {}).items():
                summed = merged.setdefault(model, [0, 0])
                summed[0] += engine_calls
                summed[1] += calls
            for key, count in metrics.get("by_status", {}).items():
                by_status[key] = by_status.get(key, 0) + count
            for target, source in ((latency, metrics.get("latency", {})), (tokenize, metrics.get("tokenize", {}))):
                for name, (buckets, total, _count) in source.items():
                    summed = target.setdefault(name, [[0] * len(CALL_BUCKETS), 0.0])
                    summed[0] = [a + b for a, b in zip(summed[0], buckets)]
                    summed[1] += total
        yield per_process
        requests = CounterMetricFamily("semserve_requests", "RPCs by method and the status they ended with",
                                       labels=["method", "code"])
        for (method, code), count in sorted(by_status.items()):
            requests.add_metric([method, code], count)
        yield requests
        merged_engine_calls = CounterMetricFamily(
            "semserve_merged_engine_calls", "Engine calls that carried several front-end calls (frontend/merging.py)",
            labels=["model"])
        merged_calls = CounterMetricFamily(
            "semserve_merged_calls", "Front-end calls that travelled to the engine inside a merged call", labels=["model"])
        for model, (engine_calls, calls) in sorted(merged.items()):
            merged_engine_calls.add_metric([model], engine_calls)
            merged_calls.add_metric([model], calls)
        yield merged_engine_calls
        yield merged_calls
        for name, help_text, label, values in (
            ("semserve_request_seconds", "Time from a call's arrival at a front end to its end", "method", latency),
            ("semserve_tokenize_seconds", "Tokenization of one request's texts", "model", tokenize),
        ):
            family = HistogramMetricFamily(name, help_text, labels=[label])
            for key, (buckets, total) in sorted(values.items()):
                _histogram(family, [key], buckets, total)
            yield family


class EngineStateCollector:
    """Read at scrape time: each model's queue, each collection's size and state."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def collect(self):
        items = GaugeMetricFamily("semserve_queue_items", "Inputs waiting in the model's queue", labels=["model"])
        tokens = GaugeMetricFamily("semserve_queue_tokens", "Real tokens waiting in the model's queue", labels=["model"])
        for model in self._engine.registry:
            items.add_metric([model.name], model.batcher.queued_items)
            tokens.add_metric([model.name], model.batcher.queued_tokens)
        yield items
        yield tokens
        documents = GaugeMetricFamily("semserve_collection_documents", "Live documents of a collection",
                                      labels=["collection"])
        failed = GaugeMetricFamily("semserve_collection_failed", "1 for a collection that is FAILED",
                                   labels=["collection"])
        store = self._engine.store
        if store is not None:  # the first engine's metrics carry the collections
            for collection in store.list():
                documents.add_metric([collection.spec.name], len(collection.matrix))
                failed.add_metric([collection.spec.name], 1 if collection.failed else 0)
            for name in store.failed():
                failed.add_metric([name], 1)
            yield documents
            yield failed
