"""The dynamic batcher: one per model, generic over what it batches.

Requests put items on a bounded queue and await their futures. One loop waits for a worker
with a free slot, lets the oldest item wait up to ``max_queue_delay`` for companions (or
less when a full batch is already there), cuts a length-sorted batch under the token budget
and hands it to the least-loaded worker. While a worker computes, items accumulate, so under
load batches fill up by themselves and under light load a lone request waits only the delay.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Sequence

from semserve.batching.items import QueueFull, RequestGroup, WorkItem
from semserve.batching.planner import split_sorted
from semserve.config import BatchingConfig
from semserve.runtime.worker import DeviceWorker
from semserve.stats import ModelStats

log = logging.getLogger(__name__)

# How many batches' worth of the queue head is sorted together.
_WINDOW_BATCHES = 4


class DynamicBatcher:
    def __init__(self, name: str, workers: Sequence[DeviceWorker], config: BatchingConfig, stats: ModelStats):
        if not workers:
            raise ValueError("a batcher needs at least one worker")
        self.name = name
        self.config = config
        self.stats = stats
        self._workers = list(workers)
        self._pending: collections.deque[WorkItem] = collections.deque()
        self._pending_tokens = 0
        self._item_arrived = asyncio.Event()
        self._worker_freed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._dispatched: set[asyncio.Task] = set()
        for w in self._workers:
            w.on_slot_freed = self._worker_freed.set

    # -- admission -------------------------------------------------------------------------

    def submit(self, payloads: Sequence[tuple[Any, int]], deadline: float | None = None) -> asyncio.Future:
        """Queue (payload, tokens) pairs all-or-nothing; raise QueueFull past either bound.

        The returned future resolves to the RequestGroup: one output per payload, in order.
        """
        count = len(payloads)
        tokens = sum(t for _, t in payloads)
        cfg = self.config
        if len(self._pending) + count > cfg.max_queue_size or self._pending_tokens + tokens > cfg.max_queue_tokens:
            self.stats.record_rejection()
            raise QueueFull(
                f"model {self.name!r} queue is full ({len(self._pending)} items, {self._pending_tokens} tokens "
                f"waiting; bounds {cfg.max_queue_size} items, {cfg.max_queue_tokens} tokens); retry with backoff"
            )
        group = RequestGroup(asyncio.get_running_loop().create_future(), count, deadline)
        now = time.monotonic()
        self._pending.extend(
            WorkItem(payload=p, tokens=t, group=group, index=i, enqueued_at=now) for i, (p, t) in enumerate(payloads)
        )
        self._pending_tokens += tokens
        self._item_arrived.set()
        return group.future

    @property
    def queued_items(self) -> int:
        return len(self._pending)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop forming batches; fail what is still queued and wait for batches in flight."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            self._pending.popleft().group.fail(RuntimeError(f"model {self.name!r} is shutting down"))
        self._pending_tokens = 0
        if self._dispatched:
            await asyncio.gather(*self._dispatched, return_exceptions=True)
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
        batch = self._take_batch()
        if not batch:
            worker.release_slot()
            return
        task = asyncio.get_running_loop().create_task(worker.process(batch))
        self._dispatched.add(task)
        task.add_done_callback(self._dispatched.discard)

    async def _wait_for_items(self) -> None:
        while True:
            self._drop_dead()
            if self._pending:
                return
            self._item_arrived.clear()
            await self._item_arrived.wait()

    async def _wait_for_worker(self) -> DeviceWorker:
        while True:
            free = [w for w in self._workers if w.has_free_slot]
            if free:
                worker = min(free, key=lambda w: w.load)
                worker.reserve_slot()
                return worker
            self._worker_freed.clear()
            await self._worker_freed.wait()

    async def _wait_until_ready(self) -> None:
        """Wait until a full batch is queued or the oldest item has waited max_queue_delay.

        When no worker is computing anything, waiting would only add latency: the batch goes at
        once. Under load workers are busy, so items accumulate while they compute.
        """
        if all(w.is_idle for w in self._workers):
            return
        delay = self.config.max_queue_delay_us / 1e6
        while self._pending and not self._batch_is_full():
            remaining = self._pending[0].enqueued_at + delay - time.monotonic()
            if remaining <= 0:
                return
            self._item_arrived.clear()
            try:
                await asyncio.wait_for(self._item_arrived.wait(), remaining)
            except TimeoutError:
                return

    def _batch_is_full(self) -> bool:
        cfg = self.config
        return len(self._pending) >= cfg.max_batch_size or self._pending_tokens >= cfg.max_batch_tokens

    def _drop_dead(self) -> None:
        if not self._pending:
            return
        now = time.monotonic()
        if any(i.is_dead(now) for i in self._pending):
            alive = [i for i in self._pending if not i.group.future.done()]
            self._pending = collections.deque(alive)
            self._pending_tokens = sum(i.tokens for i in alive)

    def _take_batch(self) -> list[WorkItem]:
        """Cut the batch holding the oldest item from a length-sorted window of the queue head."""
        self._drop_dead()
        if not self._pending:
            return []
        cfg = self.config
        window: list[WorkItem] = []
        window_tokens = 0
        while self._pending and len(window) < _WINDOW_BATCHES * cfg.max_batch_size and (
            window_tokens < _WINDOW_BATCHES * cfg.max_batch_tokens
        ):
            item = self._pending.popleft()
            window.append(item)
            window_tokens += item.tokens
        oldest = window[0]
        batches = split_sorted(window, cfg.max_batch_tokens, cfg.max_batch_size)
        chosen = next(b for b in batches if any(i is oldest for i in b))
        chosen_ids = {id(i) for i in chosen}
        # Everything not chosen goes back to the head, in arrival order.
        self._pending.extendleft(reversed([i for i in window if id(i) not in chosen_ids]))
        self._pending_tokens -= sum(i.tokens for i in chosen)
        return chosen
