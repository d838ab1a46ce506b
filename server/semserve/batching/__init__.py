"""Dynamic batching: a bounded per-model queue, a planner that cuts length-sorted batches
under a token budget, and a loop that hands them to device workers."""

from semserve.batching.batcher import DynamicBatcher
from semserve.batching.items import BatchInfo, DeadlineExpired, QueueFull, RequestGroup, WorkItem

__all__ = ["BatchInfo", "DeadlineExpired", "DynamicBatcher", "QueueFull", "RequestGroup", "WorkItem"]
