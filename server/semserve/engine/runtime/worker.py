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

import numpy as np

from semserve.engine.batching.requests import BatchPart, BatchStats
from semserve.engine.stats import ModelStats


class Runner(Protocol):
    """Turns batch parts into one output row per input on one device; both methods run on
    worker threads."""

    device: str

    def prepare(self, parts: Sequence[BatchPart]) -> Any: ...

    def run(self, prepared: Any) -> np.ndarray: ...


class DeviceWorker:

    def __init__(self, runner: Runner, stats: ModelStats, pipeline_depth: int = 2):
        self.runner = runner
        self.device = runner.device
        self.stats = stats
        self._depth = pipeline_depth
        self._reserved = 0
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix=f"prepare-{stats.model}-{self.device}")
        self._compute_pool = ThreadPoolExecutor(1, thread_name_prefix=f"compute-{stats.model}-{self.device}")
        self._computing = 0  # batches handed to the compute thread and not yet returned
        self.on_slot_freed: Callable[[], None] | None = None
        # Told (real tokens, seconds) after each batch: the batcher's admission learns from it.
        self.on_batch_computed: Callable[[int, float], None] | None = None

    @property
    def has_free_slot(self) -> bool:
        return self._reserved < self._depth

    @property
    def is_idle(self) -> bool:
        """No batch computing or waiting here, apart from a slot just reserved for the next one."""
        return self._reserved <= 1 and self._computing == 0

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

    async def process(self, batch: list[BatchPart]) -> None:
        """Compute a batch whose slot the batcher reserved; resolve every request's part.

        A prepared batch goes straight to the compute thread's queue: the next batch starts
        there as soon as the current one ends, without waiting for the event loop in between.
        """
        loop = asyncio.get_running_loop()
        live: list[BatchPart] = []
        try:
            live = _alive(batch)
            if not live:
                return
            prepared = await loop.run_in_executor(self._prepare_pool, self.runner.prepare, live)
            self._computing += 1
            try:
                done = await loop.run_in_executor(self._compute_pool, self._compute, prepared, live)
            finally:
                self._computing -= 1
            outputs, still, started, elapsed = done
            if len(still) != len(live):
                kept = {id(part) for part in still}
                _alive([p for p in live if id(p) not in kept])  # on the loop: fails the expired ones
                live = still
            if outputs is None:
                return
            lengths = [request.lengths[indexes] for request, indexes in live]
            size = sum(len(x) for x in lengths)
            real = int(sum(int(x.sum()) for x in lengths))
            info = BatchStats(size, real, size * max(int(x.max()) for x in lengths), started, elapsed)
            self.stats.record_batch(info.size, info.real_tokens, info.padded_tokens, elapsed)
            if self.on_batch_computed is not None:
                self.on_batch_computed(info.real_tokens, elapsed)
            row = 0
            for request, indexes in live:
                request.resolve(indexes, outputs[row:row + len(indexes)], info)
                row += len(indexes)
        except Exception as exc:  # a failed batch fails its requests, never the worker
            for request, _ in live:
                request.fail(exc)
        finally:
            self.release_slot()

    def _compute(self, prepared: Any, parts: list[BatchPart]):
        """On the compute thread: drop requests cancelled or expired while the batch waited for
        the device (re-padding the survivors if any went), then run it."""
        now = time.monotonic()
        still = [p for p in parts if p[0].wants_result(now)]
        if not still:
            return None, still, now, 0.0
        if len(still) != len(parts):
            prepared = self.runner.prepare(still)
        started = time.monotonic()
        outputs = self.runner.run(prepared)
        return outputs, still, started, time.monotonic() - started


def _alive(parts: list[BatchPart]) -> list[BatchPart]:
    """The parts whose requests still want results; expired ones are failed (on the loop only)."""
    now = time.monotonic()
    return [p for p in parts if not p[0].is_dead(now)]
