"""A device worker: computes batches for one model replica on one device.

Each worker has a prepare thread (padding, non-blocking copies), a compute thread that
launches the forward pass, and, for runners that launch asynchronously (GPUs), a collect
thread that waits for a batch's outputs. So on a GPU the compute thread queues batch N+1's
work right after batch N's, and the device never waits for the host to pad, copy or hand
results back between two batches. ``pipeline_depth`` bounds the batches a worker holds, which
bounds memory too (a collecting worker holds one more, queued on the device). Several workers
(one per GPU) can serve one batcher; it sends each batch to the least loaded.
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
    """Turns batch parts into one output row per input on one device; the methods run on
    worker threads. A runner may also offer ``launch(prepared) -> handle`` (queue the work and
    return at once) and ``collect(handle) -> np.ndarray`` (wait for it); then the worker
    overlaps batches on the device (unless the runner's ``asynchronous`` is False: a CPU runs
    the pass to its end anyway)."""

    device: str

    def prepare(self, parts: Sequence[BatchPart]) -> Any: ...

    def run(self, prepared: Any) -> np.ndarray: ...


class DeviceWorker:

    def __init__(self, runner: Runner, stats: ModelStats, pipeline_depth: int = 2):
        self.runner = runner
        self.device = runner.device
        # Whether the device computes padded batches (rows x longest) or only real tokens.
        self.padded = getattr(runner, "execution", "padded") == "padded"
        self.stats = stats
        self._reserved = 0
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix=f"prepare-{stats.model}-{self.device}")
        self._compute_pool = ThreadPoolExecutor(1, thread_name_prefix=f"compute-{stats.model}-{self.device}")
        # A runner that launches asynchronously (a GPU) gets a collect thread; on a CPU the pass
        # runs on the compute thread to the end and one thread hop less is paid per batch.
        asynchronous = hasattr(runner, "collect") and getattr(runner, "asynchronous", True)
        self._launch = runner.launch if asynchronous else runner.run
        self._collect = runner.collect if asynchronous else None
        self._collect_pool = (ThreadPoolExecutor(1, thread_name_prefix=f"collect-{stats.model}-{self.device}")
                              if self._collect is not None else None)
        # A worker that collects holds one batch more: queued on the device behind the one running.
        self._depth = pipeline_depth + (self._collect is not None)
        self._device_free_at = 0.0  # when the previous batch's outputs were ready (collect thread)
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
        if self._collect_pool is not None:
            self._collect_pool.shutdown(wait=False, cancel_futures=True)

    async def process(self, batch: list[BatchPart]) -> None:
        """Compute a batch whose slot the batcher reserved; resolve every request's part.

        The batch goes from thread to thread (prepare, compute, collect) without passing
        through the event loop, which hears of it once, when its outputs are ready: a busy loop
        never holds a batch back from the device.
        """
        loop = asyncio.get_running_loop()
        live: list[BatchPart] = []
        try:
            live = _alive(batch)
            if not live:
                return
            self._computing += 1
            try:
                done: asyncio.Future = loop.create_future()
                self._prepare_pool.submit(self._prepare, live, _Reply(loop, done))
                outputs, still, started, elapsed = await done
            finally:
                self._computing -= 1
            if len(still) != len(live):
                kept = {id(part) for part in still}
                _alive([p for p in live if id(p) not in kept])  # on the loop: fails the expired ones
                live = still
            if outputs is None:
                return
            lengths = [request.lengths[indexes] for request, indexes in live]
            size = sum(len(x) for x in lengths)
            real = int(sum(int(x.sum()) for x in lengths))
            computed = size * max(int(x.max()) for x in lengths) if self.padded else real
            info = BatchStats(size, real, computed, started, elapsed)
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

    def _prepare(self, parts: list[BatchPart], reply: "_Reply") -> None:
        """On the prepare thread: pad and copy, then queue for the compute thread."""
        try:
            prepared = self.runner.prepare(parts)
            self._compute_pool.submit(self._compute, prepared, parts, reply)
        except BaseException as exc:  # noqa: BLE001 - reported to the awaiting request, never lost
            reply.fail(exc)

    def _compute(self, prepared: Any, parts: list[BatchPart], reply: "_Reply") -> None:
        """On the compute thread: drop requests cancelled or expired while the batch waited for
        the device (re-padding the survivors if any went), then launch it. A runner that
        launches asynchronously hands the wait to the collect thread, and this thread is free
        for the next batch at once."""
        try:
            now = time.monotonic()
            still = [p for p in parts if p[0].wants_result(now)]
            if not still:
                reply.send((None, still, now, 0.0))
                return
            if len(still) != len(parts):
                prepared = self.runner.prepare(still)
            started = time.monotonic()
            handle = self._launch(prepared)
            if self._collect_pool is None:
                reply.send((handle, still, started, time.monotonic() - started))
            else:
                self._collect_pool.submit(self._finish, handle, still, started, reply)
        except BaseException as exc:  # noqa: BLE001 - reported to the awaiting request, never lost
            reply.fail(exc)

    def _finish(self, handle: Any, parts: list[BatchPart], launched: float, reply: "_Reply") -> None:
        """On the collect thread: wait for a launched batch's outputs. Its device time starts
        when it was launched or when the batch before it finished, whichever is later, so the
        admission's tokens/s is not diluted by batches queued behind each other."""
        try:
            outputs = self._collect(handle)
            ended = time.monotonic()
            started = max(launched, self._device_free_at)
            self._device_free_at = ended
            reply.send((outputs, parts, started, ended - started))
        except BaseException as exc:  # noqa: BLE001
            reply.fail(exc)


class _Reply:
    """An asyncio future completed from a worker thread."""

    __slots__ = ("loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future):
        self.loop, self.future = loop, future

    def send(self, value: Any) -> None:
        self.loop.call_soon_threadsafe(self._set, value, None)

    def fail(self, exc: BaseException) -> None:
        self.loop.call_soon_threadsafe(self._set, None, exc)

    def _set(self, value: Any, exc: BaseException | None) -> None:
        if self.future.done():
            return
        if exc is not None:
            self.future.set_exception(exc)
        else:
            self.future.set_result(value)


def _alive(parts: list[BatchPart]) -> list[BatchPart]:
    """The parts whose requests still want results; expired ones are failed (on the loop only)."""
    now = time.monotonic()
    return [p for p in parts if not p[0].is_dead(now)]
