"""A device worker: computes batches for one model replica on one device.

Each worker has a prepare thread (padding, pinned host tensors, non-blocking copies) and a
compute thread (the forward pass), so the next batch is made ready while the current one
runs. ``pipeline_depth`` bounds the batches a worker holds, which bounds memory too.
Several workers (one per GPU) can serve one batcher; it sends each batch to the least loaded.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Protocol, Sequence

from semserve.batching.items import BatchInfo, WorkItem
from semserve.stats import ModelStats


class Runner(Protocol):
    """Turns payloads into outputs on one device; both methods run on worker threads."""

    device: str

    def prepare(self, payloads: Sequence[Any]) -> Any: ...

    def run(self, prepared: Any) -> Sequence[Any]: ...


class DeviceWorker:
    _next_batch_id = 0

    def __init__(self, runner: Runner, stats: ModelStats, pipeline_depth: int = 2):
        self.runner = runner
        self.device = runner.device
        self.stats = stats
        self._depth = pipeline_depth
        self._reserved = 0
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix=f"prepare-{stats.model}-{self.device}")
        self._compute_pool = ThreadPoolExecutor(1, thread_name_prefix=f"compute-{stats.model}-{self.device}")
        self._compute_lock = asyncio.Lock()
        self.on_slot_freed: Callable[[], None] | None = None

    @property
    def has_free_slot(self) -> bool:
        return self._reserved < self._depth

    @property
    def is_idle(self) -> bool:
        """No batch computing or waiting here, apart from a slot just reserved for the next one."""
        return self._reserved <= 1 and not self._compute_lock.locked()

    @property
    def load(self) -> int:
        return self._reserved

    def reserve_slot(self) -> None:
        self._reserved += 1

    def release_slot(self) -> None:
        self._reserved -= 1
        if self.on_slot_freed is not None:
            self.on_slot_freed()

    def close(self) -> None:
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        self._compute_pool.shutdown(wait=False, cancel_futures=True)

    async def process(self, batch: list[WorkItem]) -> None:
        """Compute a batch whose slot the batcher reserved; resolve every item's future."""
        loop = asyncio.get_running_loop()
        live: list[WorkItem] = []
        try:
            live = _alive(batch)
            if not live:
                return
            prepared = await loop.run_in_executor(self._prepare_pool, self.runner.prepare, [i.payload for i in live])
            async with self._compute_lock:
                # Items may have been cancelled or expired while waiting for the device:
                # drop them before compute, re-padding the survivors if any went.
                still = _alive(live)
                if not still:
                    return
                if len(still) != len(live):
                    live = still
                    prepared = None
                payloads = [i.payload for i in live]
                started = time.monotonic()
                outputs = await loop.run_in_executor(self._compute_pool, self._compute, prepared, payloads)
                elapsed = time.monotonic() - started
            DeviceWorker._next_batch_id += 1
            longest = max(i.tokens for i in live)
            info = BatchInfo(
                batch_id=DeviceWorker._next_batch_id,
                size=len(live),
                padded_tokens=longest * len(live),
                real_tokens=sum(i.tokens for i in live),
                started_at=started,
                inference_time_s=elapsed,
            )
            self.stats.record_batch(info.size, info.real_tokens, info.padded_tokens, elapsed)
            for item, out in zip(live, outputs):
                item.group.resolve(item.index, out, info, started - item.enqueued_at)
        except Exception as exc:  # a failed batch fails its requests, never the worker
            for item in live:
                item.group.fail(exc)
        finally:
            self.release_slot()

    def _compute(self, prepared: Any, payloads: Sequence[Any]) -> Sequence[Any]:
        if prepared is None:
            prepared = self.runner.prepare(payloads)
        return self.runner.run(prepared)


def _alive(items: list[WorkItem]) -> list[WorkItem]:
    now = time.monotonic()
    return [i for i in items if not i.is_dead(now)]
