"""Dynamic batching: a bounded per-model queue of requests, a planner that cuts length-sorted
batches from arrays of lengths, and a loop that hands batches to device workers."""

from semserve.engine.batching.batcher import DynamicBatcher
from semserve.engine.batching.requests import BatchPart, BatchStats, QueuedRequest

__all__ = ["BatchPart", "BatchStats", "DynamicBatcher", "QueuedRequest"]
