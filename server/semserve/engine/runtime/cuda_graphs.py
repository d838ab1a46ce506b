"""CUDA graphs for padded batches: one captured forward pass per (batch, length) bucket.

Launching a transformer's ~150 kernels from Python costs milliseconds of GIL time per batch,
which the event loop and the tokenizer threads then wait for (docs/benchmarks.md). Replaying a
captured graph costs a few launches. A batch is copied into the static input tensors of the
smallest bucket that holds it; rows and columns beyond it are padding (masked), so results are
the same as eager up to floating-point reassociation in kernels of another shape.

Graphs are captured ahead at load, smallest shapes first, within a time budget
(``capture_ahead``); any left are captured on first use. A capture takes tens of milliseconds
during which that device computes nothing, so capturing while serving shows up as latency
spikes. All graphs share one memory pool (replays never overlap: one compute thread per device).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch

log = logging.getLogger(__name__)

K = TypeVar("K")
T = TypeVar("T")

# Rows of padding cost GPU time like real rows: above 32, buckets are at most 32 rows apart up
# to 256 (a 151-text batch replays 160 rows, not 256), 64 apart beyond. More buckets are more
# graphs to capture, each once (``capture_ahead``).
BATCH_BUCKETS = (1, 4, 16, 32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
LENGTH_STEP = 32


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor
    mask: torch.Tensor
    types: torch.Tensor
    out: torch.Tensor


def graph_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Batch buckets for a batcher whose batches hold at most ``max_batch_size`` items: the
    standard buckets below it, and the cap itself so that full batches replay too."""
    return tuple(sorted({b for b in BATCH_BUCKETS if b < max_batch_size} | {max_batch_size}))


def bucket_for(rows: int, width: int, max_width: int,
               batch_buckets: tuple[int, ...] = BATCH_BUCKETS) -> tuple[int, int] | None:
    """The (batch, length) bucket of a padded batch, or None when it fits no bucket."""
    batch = next((b for b in batch_buckets if b >= rows), None)
    length = -(-width // LENGTH_STEP) * LENGTH_STEP
    if batch is None or width > max_width:
        return None
    return batch, min(length, max(max_width, width))


# torch allows one capture at a time in a process; replicas of one engine capture from threads
# of their own, so they take turns.
_CAPTURE_TURN = threading.Lock()


@contextlib.contextmanager
def capturing(graph: torch.cuda.CUDAGraph, device: torch.device, pool) -> Iterator[None]:
    """Capture into ``graph`` on a stream of ``device``, one capture at a time in the process.

    ``torch.cuda.graph`` left to itself captures on one stream per process, made on whichever
    device was current when the first capture began, and the threads here never change the
    current device. A replica on any other GPU then captured onto a stream of the wrong device,
    every capture failed, and it served eagerly (on two H200s: docs/benchmarks.md, "Several
    GPUs"). The error mode is the capturing thread's own: under the process-wide mode, the
    forward passes of another replica's thread, serving meanwhile, failed while the capture was
    under way (tests/test_cuda_graph_devices.py).
    """
    device = torch.device(device)
    with _CAPTURE_TURN, torch.cuda.device(device):
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            yield
        torch.cuda.current_stream(device).wait_stream(stream)


def capture_or_none(capture: Callable[[K], T], key: K, device: torch.device) -> T | None:
    """``capture(key)``, or None (logged) when the model's forward cannot be captured; the caller
    then turns its graphs off and serves eagerly. (A capture voided by another thread's work on
    the same GPU is not tried again: torch leaves the memory pool marked as being recorded to.)"""
    try:
        return capture(key)
    except Exception:
        log.warning("CUDA graph capture failed; this replica runs eagerly from now on", exc_info=True)
        torch.cuda.synchronize(device)
        return None


class GraphedForward:
    def __init__(self, model: torch.nn.Module, device: torch.device, max_width: int):
        self.model = model
        self.device = device
        self.max_width = max_width
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self.enabled = True
        # Chosen by the batching calibration (engine/runtime/calibration.py), else the defaults.
        self.batch_buckets: tuple[int, ...] = BATCH_BUCKETS

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        rows, width = ids.shape
        key = bucket_for(rows, width, self.max_width, self.batch_buckets) if self.enabled else None
        if key is None:
            return self.model(ids, mask, types)
        entry = self._graphs.get(key) or self._capture_or_disable(key)
        if entry is None:
            return self.model(ids, mask, types)
        entry.ids.zero_()
        entry.mask.zero_()
        entry.types.zero_()
        entry.ids[:rows, :width].copy_(ids)
        entry.mask[:rows, :width].copy_(mask)
        entry.types[:rows, :width].copy_(types)
        entry.mask[rows:, 0] = 1  # padding rows attend to one token: no fully masked row
        entry.graph.replay()
        return entry.out[:rows]

    def bucket_keys(self) -> list[tuple[int, int]]:
        """Every (batch, length) bucket a batch can land in, cheapest first."""
        lengths = sorted({min(n, self.max_width) for n in range(LENGTH_STEP, self.max_width + LENGTH_STEP, LENGTH_STEP)})
        return sorted(((b, n) for b in self.batch_buckets for n in lengths), key=lambda k: (k[0] * k[1], k))

    def capture_ahead(self, budget_s: float) -> tuple[int, int, float]:
        """Capture the buckets not captured yet until ``budget_s`` is spent; returns (captured
        now, buckets in all, seconds). Call with no other work on the device."""
        started = time.monotonic()
        keys = self.bucket_keys()
        captured = 0
        for key in keys:
            if not self.enabled or time.monotonic() - started > budget_s:
                break
            if key not in self._graphs and self._capture_or_disable(key) is not None:
                captured += 1
        return captured, len(keys), time.monotonic() - started

    def _capture_or_disable(self, key: tuple[int, int]) -> _Graph | None:
        """The bucket's graph, captured now; None, and graphs off for good, when the model's
        forward cannot be captured (it still serves, eagerly)."""
        entry = capture_or_none(self._capture, key, self.device)
        if entry is None:
            self.enabled = False
        return entry

    def _capture(self, key: tuple[int, int]) -> _Graph:
        batch, length = key
        ids = torch.zeros((batch, length), dtype=torch.long, device=self.device)
        mask = torch.ones((batch, length), dtype=torch.long, device=self.device)
        mask[:, length // 2 :] = 0  # capture the masked path, as real batches take it
        types = torch.zeros_like(ids)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.model(ids, mask, types)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with capturing(graph, self.device, self._pool):
            out = self.model(ids, mask, types)
        entry = _Graph(graph, ids, mask, types, out)
        self._graphs[key] = entry
        log.debug("captured a CUDA graph for batch %d x length %d", batch, length)
        return entry
