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


@dataclass(frozen=True)
class ItemResult:
    value: Any
    batch: BatchInfo
    queue_time_s: float


@dataclass(eq=False)
class WorkItem:
    """One text or pair. ``payload`` is whatever the runner's ``prepare`` understands."""

    payload: Any
    tokens: int
    future: asyncio.Future
    deadline: float | None = None  # time.monotonic() based
    enqueued_at: float = field(default_factory=time.monotonic)

    def is_dead(self, now: float) -> bool:
        """Resolve an expired item and report whether it must not be computed."""
        if self.future.done():  # cancelled by the caller, or already failed
            return True
        if self.deadline is not None and now >= self.deadline:
            self.future.set_exception(DeadlineExpired("deadline passed while queued"))
            return True
        return False
