"""The dynamic batcher: one per model.

Requests are queued whole on a bounded queue and awaited through one future each. One loop
waits for a worker with a free slot, lets the oldest input wait up to ``max_queue_delay`` for
companions (or less when a full batch is already there), cuts a length-sorted batch under the
token budget and hands it to the least-loaded worker. While a worker computes, inputs
accumulate, so under load batches fill up by themselves and under light load a lone request
waits only the delay (or nothing, when the device is idle).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import Callable, Protocol, Sequence

import numpy as np

from semserve.config import BatchingConfig
from semserve.core.errors import QueueFull, ShuttingDown
from semserve.core.types import TokenBatch
from semserve.engine.batching.planner import batch_of_first
from semserve.engine.batching.requests import BatchPart, QueuedRequest
from semserve.engine.stats import ModelStats

log = logging.getLogger(__name__)

# How many batches' worth of the queue head is sorted together.
_WINDOW_BATCHES = 4
# Weight of each new sample in the observed rates (about the last five batches count).
_RATE_EWMA = 0.2


def _moving_average(previous: float, sample: float) -> float:
    return sample if previous <= 0 else previous + _RATE_EWMA * (sample - previous)


class Worker(Protocol):
    """What the batcher needs of a device worker (runtime/worker.py): slots, load, and
    ``process`` for a batch whose slot it reserved."""

    on_slot_freed: Callable[[], None] | None

    @property
    def has_free_slot(self) -> bool: ...

    @property
    def is_idle(self) -> bool: ...

    @property
    def load(self) -> int: ...

    def reserve_slot(self) -> None: ...

    def release_slot(self) -> None: ...

    async def process(self, batch: list[BatchPart]) -> None: ...

    def close(self) -> None: ...


class DynamicBatcher:
    def __init__(self, name: str, workers: Sequence[Worker], config: BatchingConfig, stats: ModelStats):
        if not workers:
            raise ValueError("a batcher needs at least one worker")
        self.name = name
        self.config = config
        self.stats = stats
        self._workers = list(workers)
        # Workers whose runners compute only real tokens are fed batches cut on real tokens.
        self._padded = any(getattr(w, "padded", True) for w in self._workers)
        self._queue: collections.deque[QueuedRequest] = collections.deque()
        self._queued_items = 0
        self._queued_tokens = 0
        self._item_arrived = asyncio.Event()
        self._worker_freed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._dispatched: set[asyncio.Task] = set()
        # Measured throughput of the model's devices (tokens/s), 0 when unknown: with it, a
        # request that would wait longer than max_queue_time_ms is refused at once.
        self.tokens_per_s = 0.0
        # The rate the queue really drains at while it is backlogged (tokens/s, moving average;
        # 0 until seen): gRPC, tokenization and padding make serving slower than the forward
        # passes that calibration timed, and admission must not promise waits it cannot keep.
        self.observed_tokens_per_s = 0.0
        # Real tokens per second of compute in the batches served so far (per worker, moving
        # average): known from the first batch on, before any backlog was seen.
        self.compute_tokens_per_s = 0.0
        self._last_take_at = 0.0
        self._backlogged = False
        # Tokens handed to workers and not yet computed: a new request waits for them too.
        self._in_flight_tokens = 0
        for w in self._workers:
            w.on_slot_freed = self._worker_freed.set
            w.on_batch_computed = self._observe_compute

    # -- admission -------------------------------------------------------------------------

    def submit(self, tokens: TokenBatch, deadline: float | None = None) -> asyncio.Future:
        """Queue a request all-or-nothing; raise QueueFull past either bound.

        The returned future resolves to the QueuedRequest: ``outputs`` holds one row per input,
        in input order, and ``timing`` where its time went.
        """
        count = len(tokens)
        total = tokens.total_tokens
        cfg = self.config
        if self._queued_items + count > cfg.max_queue_size or self._queued_tokens + total > cfg.max_queue_tokens:
            self.stats.record_rejection()
            raise QueueFull(
                f"model {self.name!r} queue is full ({self._queued_items} items, {self._queued_tokens} tokens "
                f"waiting; bounds {cfg.max_queue_size} items, {cfg.max_queue_tokens} tokens); retry with backoff"
            )
        if self._queue and cfg.max_queue_time_ms > 0:  # an empty queue always admits
            wait_ms = max(self.estimated_wait_ms(total), self._head_wait_ms())
            if wait_ms > cfg.max_queue_time_ms:
                self.stats.record_rejection()
                raise QueueFull(
                    f"model {self.name!r} is overloaded: this request would wait about {wait_ms:.0f} ms "
                    f"({self._queued_tokens + self._in_flight_tokens} tokens queued or computing at a measured "
                    f"{self.drain_tokens_per_s:.0f} tokens/s), "
                    f"over max_queue_time_ms {cfg.max_queue_time_ms:.0f}; retry with backoff"
                )
        request = QueuedRequest(asyncio.get_running_loop().create_future(), tokens, deadline, time.monotonic())
        self._queue.append(request)
        self._queued_items += count
        self._queued_tokens += total
        self._item_arrived.set()
        return request.future

    @property
    def drain_tokens_per_s(self) -> float:
        """The rate admission counts on: the calibrated one, or where lower the rate seen in
        serving (the queue's drain under backlog, the batches' own compute rate). 0 (no time
        bound) when the model was not measured."""
        if self.tokens_per_s <= 0:
            return 0.0
        rates = [self.tokens_per_s]
        if self.observed_tokens_per_s > 0:
            rates.append(self.observed_tokens_per_s)
        if self.compute_tokens_per_s > 0:
            rates.append(self.compute_tokens_per_s * len(self._workers))
        return min(rates)

    def estimated_wait_ms(self, tokens: int = 0) -> float:
        """How long the batches in flight, the queue and ``tokens`` more take at the measured
        rate; 0 if unknown."""
        rate = self.drain_tokens_per_s
        if rate <= 0:
            return 0.0
        return (self._in_flight_tokens + self._queued_tokens + tokens) / rate * 1000

    def _head_wait_ms(self) -> float:
        """How long the oldest queued request has already waited, when the rate is known.

        A sojourn check in the manner of CoDel: when the CPU is shared with the callers and the
        front ends, compute slows down under exactly the load that admission judges, and every
        rate estimate lags. The age of the queue head does not: once it is past the bound, a new
        request behind it would be too."""
        if not self._queue or self.drain_tokens_per_s <= 0:
            return 0.0
        return (time.monotonic() - self._queue[0].enqueued_at) * 1000

    def _observe_compute(self, real_tokens: int, seconds: float) -> None:
        if real_tokens <= 0 or seconds <= 0:
            return
        self.compute_tokens_per_s = _moving_average(self.compute_tokens_per_s, real_tokens / seconds)

    def _observe_drain(self, taken_tokens: int) -> None:
        """One sample of the drain rate per batch taken while the queue stayed backlogged: the
        interval since the previous take is then the time the devices needed for it."""
        now = time.monotonic()
        if self._backlogged and taken_tokens and now > self._last_take_at:
            self.observed_tokens_per_s = _moving_average(
                self.observed_tokens_per_s, taken_tokens / (now - self._last_take_at)
            )
        self._last_take_at = now
        self._backlogged = bool(self._queue)

    @property
    def queued_items(self) -> int:
        return self._queued_items

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self, wait_s: float | None = None) -> None:
        """Stop forming batches; fail what is still queued and wait for batches in flight (at most
        ``wait_s`` when given: at server shutdown their callers are gone after the grace period,
        and a CPU batch can take seconds)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            self._queue.popleft().fail(ShuttingDown(f"model {self.name!r} is shutting down; retry on another server"))
        self._queued_items = self._queued_tokens = 0
        if self._dispatched:
            await asyncio.wait(set(self._dispatched), timeout=wait_s)
        for w in self._workers:
            w.close()

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any single bad batch
                log.exception("batcher %s: unexpected error while forming a batch", self.name)
                await asyncio.sleep(0.01)

    async def _run_once(self) -> None:
        await self._wait_for_items()
        worker = await self._wait_for_worker()
        await self._wait_until_ready()
        batch, tokens = self._take_batch()
        if not batch:
            worker.release_slot()
            return
        self._in_flight_tokens += tokens
        task = asyncio.get_running_loop().create_task(worker.process(batch))
        self._dispatched.add(task)
        task.add_done_callback(functools.partial(self._batch_done, tokens))

    def _batch_done(self, tokens: int, task: asyncio.Task) -> None:
        self._dispatched.discard(task)
        self._in_flight_tokens -= tokens

    async def _wait_for_items(self) -> None:
        while True:
            self._drop_dead()
            if self._queue:
                return
            self._item_arrived.clear()
            await self._item_arrived.wait()

    async def _wait_for_worker(self) -> Worker:
        while True:
            free = [w for w in self._workers if w.has_free_slot]
            if free:
                worker = min(free, key=lambda w: w.load)
                worker.reserve_slot()
                return worker
            self._worker_freed.clear()
            await self._worker_freed.wait()

    async def _wait_until_ready(self) -> None:
        """Wait until a full batch is queued or the oldest input has waited max_queue_delay.

        When no worker is computing anything, waiting would only add latency: the batch goes at
        once. Under load workers are busy, so inputs accumulate while they compute.
        """
        if all(w.is_idle for w in self._workers):
            return
        delay = self.config.max_queue_delay_us / 1e6
        while self._queue and not self._batch_is_full():
            remaining = self._queue[0].enqueued_at + delay - time.monotonic()
            if remaining <= 0:
                return
            self._item_arrived.clear()
            try:
                await asyncio.wait_for(self._item_arrived.wait(), remaining)
            except TimeoutError:
                return

    def _batch_is_full(self) -> bool:
        cfg = self.config
        return self._queued_items >= cfg.max_batch_size or self._queued_tokens >= cfg.max_batch_tokens

    def _drop_dead(self) -> None:
        """Forget cancelled and expired requests (one check per request, not per input)."""
        if not self._queue:
            return
        now = time.monotonic()
        if any(r.is_dead(now) for r in self._queue):
            self._queue = collections.deque(r for r in self._queue if not r.future.done())
            self._queued_items = sum(len(r.pending) for r in self._queue)
            self._queued_tokens = sum(r.pending_tokens for r in self._queue)

    def _take_batch(self) -> tuple[list[BatchPart], int]:
        """Cut the batch holding the oldest input from a length-sorted window of the queue head;
        returns its parts and their real tokens."""
        self._drop_dead()
        if not self._queue:
            return [], 0
        cfg = self.config
        tokens_before = self._queued_tokens
        window: list[QueuedRequest] = []
        items = tokens = 0
        for request in self._queue:
            window.append(request)
            items += len(request.pending)
            tokens += request.pending_tokens
            if items >= _WINDOW_BATCHES * cfg.max_batch_size or tokens >= _WINDOW_BATCHES * cfg.max_batch_tokens:
                break
        if len(window) == 1:
            lengths = window[0].lengths[window[0].pending]
        else:
            lengths = np.concatenate([r.lengths[r.pending] for r in window])
        chosen = batch_of_first(lengths, cfg.max_batch_tokens, cfg.max_batch_size, self._padded)
        parts: list[BatchPart] = []
        start = 0
        for request in window:
            end = start + len(request.pending)
            selected = chosen[start:end]
            start = end
            if selected.any():
                before = request.pending_tokens
                taken = request.take(selected)
                parts.append((request, taken))
                self._queued_items -= len(taken)
                self._queued_tokens -= before - request.pending_tokens
        # Requests still holding inputs go back to the head, in arrival order.
        for _ in window:
            self._queue.popleft()
        self._queue.extendleft(reversed([r for r in window if len(r.pending)]))
        taken_tokens = tokens_before - self._queued_tokens
        self._observe_drain(taken_tokens)
        return parts, taken_tokens
