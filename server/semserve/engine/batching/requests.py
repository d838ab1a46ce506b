"""What travels through the batcher: whole requests, and batches made of slices of them.

A request stays one object from admission to reply. Its inputs are a flat ``TokenBatch``; the
queue keeps the indexes of its inputs not yet batched (``pending``), and a batch is a list of
``(request, indexes)`` parts. Nothing is created per text, so the engine's Python work grows
with requests and batches, not with texts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from semserve.core.errors import DeadlineExpired
from semserve.core.types import Timing, TokenBatch


@dataclass(frozen=True, slots=True)
class BatchStats:
    """One forward pass, as every request in it accounts for it."""

    size: int
    real_tokens: int
    padded_tokens: int
    started_at: float
    inference_time_s: float


class QueuedRequest:
    """One request's inputs, their outputs as batches finish, and its timing.

    ``future`` resolves to the request itself once every input has an output row.
    """

    __slots__ = ("future", "tokens", "lengths", "pending", "pending_tokens", "outputs", "remaining",
                 "deadline", "enqueued_at", "timing")

    def __init__(self, future: asyncio.Future, tokens: TokenBatch, deadline: float | None, now: float):
        self.future = future
        self.tokens = tokens
        self.lengths = tokens.lengths
        self.pending = np.arange(len(self.lengths))
        self.pending_tokens = int(self.lengths.sum())
        self.outputs: np.ndarray | None = None
        self.remaining = len(self.lengths)
        self.deadline = deadline
        self.enqueued_at = now
        self.timing = Timing(compute_tokens=self.pending_tokens)

    def take(self, selected: np.ndarray) -> np.ndarray:
        """Remove the pending inputs at the ``selected`` mask and return their indexes."""
        taken = self.pending[selected]
        self.pending = self.pending[~selected]
        self.pending_tokens -= int(self.lengths[taken].sum())
        return taken

    def wants_result(self, now: float) -> bool:
        """Whether its inputs should still be computed: not cancelled, failed or expired. Only
        reads state, so a device thread may ask it; ``is_dead`` also fails an expired request."""
        return not self.future.done() and (self.deadline is None or now < self.deadline)

    def is_dead(self, now: float) -> bool:
        """Fail an expired request and report whether its inputs must not be computed (on the loop)."""
        if self.wants_result(now):
            return False
        if not self.future.done():  # expired, not yet told
            self.fail(DeadlineExpired("deadline passed while the request was queued; nothing was computed"))
        return True

    def resolve(self, indexes: np.ndarray, rows: np.ndarray, batch: BatchStats) -> None:
        if self.future.done():
            return
        if self.outputs is None:
            self.outputs = np.empty((len(self.lengths), *rows.shape[1:]), dtype=rows.dtype)
        self.outputs[indexes] = rows
        t = self.timing
        t.queue_s = max(t.queue_s, batch.started_at - self.enqueued_at)
        t.inference_s += batch.inference_time_s
        t.padded_tokens += batch.padded_tokens
        t.batches += 1
        self.remaining -= len(indexes)
        if self.remaining == 0:
            self.future.set_result(self)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


# A slice of one request that a batch computes: the request and the indexes of its inputs.
BatchPart = tuple[QueuedRequest, np.ndarray]
