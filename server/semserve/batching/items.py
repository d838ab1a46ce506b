"""What travels through the batcher: queued work items and what they resolve to."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The model's queue is at its bound; the caller answers RESOURCE_EXHAUSTED."""


class DeadlineExpired(Exception):
    """The item's deadline passed while it waited; it was dropped before compute."""


@dataclass(frozen=True)
class BatchInfo:
    """One forward pass, shared by every item it computed (for per-request timing)."""

    batch_id: int
    size: int
    padded_tokens: int
    real_tokens: int
    started_at: float
    inference_time_s: float


class RequestGroup:
    """The items of one request, resolved together through one future.

    One future per request rather than per text keeps the event loop's work per request
    constant: a 32-text request costs one future, not 32 plus a gather. The future's result
    is the group itself: the outputs in input order, and the batches that computed them.
    """

    __slots__ = ("future", "values", "batches", "queue_time_s", "remaining", "deadline")

    def __init__(self, future: asyncio.Future, count: int, deadline: float | None):
        self.future = future
        self.values: list[Any] = [None] * count
        self.batches: dict[int, BatchInfo] = {}
        self.queue_time_s = 0.0
        self.remaining = count
        self.deadline = deadline

    def resolve(self, index: int, value: Any, batch: BatchInfo, queue_time_s: float) -> None:
        if self.future.done():
            return
        self.values[index] = value
        self.batches[batch.batch_id] = batch
        if queue_time_s > self.queue_time_s:
            self.queue_time_s = queue_time_s
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(self)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(eq=False, slots=True)
class WorkItem:
    """One text or pair. ``payload`` is whatever the runner's ``prepare`` understands."""

    payload: Any
    tokens: int
    group: RequestGroup
    index: int = 0
    enqueued_at: float = field(default_factory=time.monotonic)

    def is_dead(self, now: float) -> bool:
        """Resolve an expired request and report whether this item must not be computed."""
        group = self.group
        if group.future.done():  # cancelled by the caller, or already failed
            return True
        if group.deadline is not None and now >= group.deadline:
            group.fail(DeadlineExpired("deadline passed while queued"))
            return True
        return False
