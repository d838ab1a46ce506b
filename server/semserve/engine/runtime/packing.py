"""The runner for unpadded execution: a batch's tokens flattened, its graphs keyed by token count.

``flatten_parts`` and ``pack_arrays`` lay a batch out as flat arrays (ids, type ids, positions,
segment ids, slot boundaries) with a few NumPy operations and one host-to-device copy, no
per-text Python. With CUDA graphs the token count
is rounded up to a bucket (doubling to 512, then 512 apart), so one graph serves every batch of up
to that many tokens whatever its mix of lengths. The bucket's spare tokens form padding "texts"
of at most ``max_seqlen`` tokens in slots of their own, and unused slots are empty; a graph
has a fixed number of slots (the batch size cap plus the padding slots); the flash kernel's
blocks for an empty slot exit at once. Outputs of slots past the real texts are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from semserve.engine.batching.requests import BatchPart
from semserve.engine.runtime.cuda_graphs import capture_or_none, capturing
from semserve.engine.runtime.runners import ModelRunner, collect_outputs, queue_outputs
from semserve.models.packed import PackedInputs

log = logging.getLogger(__name__)

FIRST_BUCKET = 64
BUCKET_STEP = 512  # above 512 tokens; at most 511 padding tokens on batches that large
DEFAULT_MAX_ROWS = 512
DEFAULT_MAX_TOKENS = 32768


def token_buckets(max_tokens: int) -> list[int]:
    """Token counts a graph is captured for: 64, 128, 256, 512, then every 512 to ``max_tokens``."""
    buckets, size = [], FIRST_BUCKET
    while size < BUCKET_STEP:
        buckets.append(size)
        if size >= max_tokens:
            return buckets
        size *= 2
    while True:
        buckets.append(size)
        if size >= max_tokens:
            return buckets
        size += BUCKET_STEP


@dataclass(frozen=True)
class Layout:
    """A graph's fixed shape: ``tokens`` token positions, ``slots`` texts, ``max_seqlen``."""

    tokens: int
    real_slots: int
    pad_slots: int
    max_seqlen: int

    @property
    def slots(self) -> int:
        return self.real_slots + self.pad_slots


@dataclass
class PackedBatch:
    """A prepared batch: one int64 tensor holding ids, type ids, positions, segments (``tokens``
    each) and the ``slots + 1`` cumulative lengths, on the device."""

    staged: torch.Tensor
    layout: Layout
    rows: int
    graphed: bool

    def inputs(self) -> PackedInputs:
        return unpack(self.layout, self.staged)


def unpack(layout: Layout, staged: torch.Tensor) -> PackedInputs:
    n = layout.tokens
    return PackedInputs(
        input_ids=staged[:n], token_type_ids=staged[n:2 * n], position_ids=staged[2 * n:3 * n],
        segments=staged[3 * n:4 * n], cu_seqlens=staged[4 * n:].to(torch.int32), max_seqlen=layout.max_seqlen,
    )


def flatten_parts(parts: Sequence[BatchPart]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """(lengths, flat ids, flat type ids or None, each text's start in the flat arrays)."""
    lengths = np.concatenate([request.lengths[indexes] for request, indexes in parts]).astype(np.int64)
    if len(parts) == 1:
        request, indexes = parts[0]
        return lengths, request.tokens.ids, request.tokens.type_ids, request.tokens.offsets[indexes]
    bases = np.cumsum([0] + [len(r.tokens.ids) for r, _ in parts[:-1]])
    flat = np.concatenate([r.tokens.ids for r, _ in parts])
    types = None
    if parts[0][0].tokens.type_ids is not None:
        types = np.concatenate([r.tokens.type_ids for r, _ in parts])
    starts = np.concatenate([r.tokens.offsets[i] + b for (r, i), b in zip(parts, bases)])
    return lengths, flat, types, starts


def pack_arrays(lengths: np.ndarray, flat: np.ndarray, types: np.ndarray | None, starts: np.ndarray,
                layout: Layout, pad_id: int) -> np.ndarray:
    """The staged int64 array of ``layout`` for texts ``flat[starts[i]:starts[i] + lengths[i]]``:
    real texts in slots 0..rows-1, the spare tokens in padding slots of at most ``max_seqlen``."""
    rows, n = len(lengths), layout.tokens
    real = int(lengths.sum())
    out_starts = np.zeros(rows, dtype=np.int64)
    np.cumsum(lengths[:-1], out=out_starts[1:])
    staged = np.zeros(4 * n + layout.slots + 1, dtype=np.int64)
    ids, type_ids, positions, segments = (staged[i * n:(i + 1) * n] for i in range(4))
    cu = staged[4 * n:]
    if real:
        within = np.arange(real, dtype=np.int64) - np.repeat(out_starts, lengths)
        gather = np.repeat(starts.astype(np.int64), lengths) + within
        ids[:real] = flat[gather]
        if types is not None:
            type_ids[:real] = types[gather]
        positions[:real] = within
        segments[:real] = np.repeat(np.arange(rows, dtype=np.int64), lengths)
    cu[1:rows + 1] = np.cumsum(lengths)
    spare = n - real
    ids[real:] = pad_id
    if spare:
        chunks = -(-spare // layout.max_seqlen)
        within = np.arange(spare, dtype=np.int64)
        positions[real:] = within % layout.max_seqlen
        segments[real:] = rows + within // layout.max_seqlen
        ends = real + np.minimum(np.arange(1, chunks + 1) * layout.max_seqlen, spare)
        cu[rows + 1:rows + 1 + chunks] = ends
        cu[rows + 1 + chunks:] = n
    else:
        cu[rows + 1:] = n
    return staged


class PackedRunner:
    """Runs a model's ``forward_packed`` (models/packed.py) on flattened batches; the same
    interface as ``ModelRunner`` (prepare on the prepare thread, launch and collect)."""

    execution = "unpadded"

    def __init__(self, model, pad_id: int, cuda_graphs: bool = False):
        self.model = model
        self.device = str(model.device)
        self._device = torch.device(model.device)
        self._pad_id = pad_id
        self._max_length = int(model.max_tokens)
        self.asynchronous = self._device.type == "cuda"
        self._graphs_on = cuda_graphs and self._device.type == "cuda"
        self._graphs: dict[Layout, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if self._graphs_on else None
        self._max_rows = DEFAULT_MAX_ROWS
        self._layouts: list[Layout] = []
        model.enable_packing()
        self.set_batch_limits(DEFAULT_MAX_TOKENS, DEFAULT_MAX_ROWS)

    def set_batch_limits(self, max_batch_tokens: int, max_batch_size: int) -> list[int]:
        """Size the graphs for the batcher's limits; returns the graphs' slot counts (for info).
        Graphs sized for other limits are dropped (recaptured on demand)."""
        if not self._graphs_on:
            return []
        layouts, previous = [], 0
        for tokens in token_buckets(max_batch_tokens):
            if previous >= max_batch_size * self._max_length:
                break  # no batch of at most max_batch_size texts has this many tokens
            max_seqlen = min(self._max_length, tokens)
            pad_slots = -(-(tokens - previous) // max_seqlen)
            layouts.append(Layout(tokens, min(max_batch_size, tokens), pad_slots, max_seqlen))
            previous = tokens
        if layouts != self._layouts:
            self._graphs.clear()
            self._layouts = layouts
        return [max_batch_size]

    def capture_graphs(self, budget_s: float) -> tuple[int, int, float] | None:
        """Capture graphs for the token buckets, smallest first, within ``budget_s``; returns
        (graphs held, buckets in all, seconds)."""
        if not self._graphs_on:
            return None
        started = time.monotonic()
        with torch.inference_mode():
            for layout in self._layouts:
                if not self._graphs_on or time.monotonic() - started > budget_s:
                    break
                if layout not in self._graphs:
                    self._capture_or_disable(layout)
        return len(self._graphs), len(self._layouts), time.monotonic() - started

    def forward_shape(self, rows: int, length: int) -> None:
        """One forward pass of ``rows`` texts of ``length`` tokens (for calibration)."""
        lengths = np.full(rows, length, dtype=np.int64)
        flat = np.full(rows * length, self._pad_id + 1, dtype=np.int64)
        starts = np.arange(rows, dtype=np.int64) * length
        self.run(self._stage(lengths, flat, None, starts))

    def prepare(self, parts: Sequence[BatchPart]) -> PackedBatch:
        return self._stage(*flatten_parts(parts))

    def _stage(self, lengths, flat, types, starts) -> PackedBatch:
        real, rows = int(lengths.sum()), len(lengths)
        layout = self._layout_for(real, rows)
        graphed = layout is not None
        if layout is None:  # exact shape, run eagerly
            layout = Layout(real, rows, 0, max(int(lengths.max()), 1))
        staged = torch.from_numpy(pack_arrays(lengths, flat, types, starts, layout, self._pad_id))
        if self._device.type != "cpu":
            staged = staged.to(self._device, non_blocking=True)
        return PackedBatch(staged, layout, rows, graphed)

    def _layout_for(self, tokens: int, rows: int) -> Layout | None:
        if not self._graphs_on:
            return None
        for layout in self._layouts:
            spare_slots = -(-(layout.tokens - tokens) // layout.max_seqlen)
            if layout.tokens >= tokens and layout.real_slots >= rows and spare_slots <= layout.pad_slots:
                return layout
        return None

    def run(self, batch: PackedBatch) -> np.ndarray:
        return self.collect(self.launch(batch))

    def launch(self, batch: PackedBatch):
        """As ``ModelRunner.launch``: on a GPU, queue the pass and the copy of its outputs and
        return before the device has run them."""
        with torch.inference_mode():
            return queue_outputs(self._forward(batch)[:batch.rows].float())

    collect = staticmethod(collect_outputs)

    def _forward(self, batch: PackedBatch) -> torch.Tensor:
        if batch.graphed and self._graphs_on:
            entry = self._graphs.get(batch.layout) or self._capture_or_disable(batch.layout)
            if entry is not None:
                graph, staged, out = entry
                staged.copy_(batch.staged)
                graph.replay()
                return out
        return self.model.forward_packed(batch.inputs())

    def _capture_or_disable(self, layout: Layout):
        entry = capture_or_none(self._capture, layout, self._device)
        if entry is None:
            self._graphs_on = False
        return entry

    def _capture(self, layout: Layout):
        # Any valid batch of this layout will do: the kernels' launch shapes depend on the layout only.
        count = min(layout.real_slots, -(-layout.tokens // layout.max_seqlen))
        if count * layout.max_seqlen <= layout.tokens:
            lengths = np.full(count, layout.max_seqlen, dtype=np.int64)
        else:
            share, extra = divmod(layout.tokens, count)
            lengths = np.array([share + 1] * extra + [share] * (count - extra), dtype=np.int64)
        flat = np.full(int(lengths.sum()), self._pad_id + 1, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
        staged = torch.from_numpy(pack_arrays(lengths, flat, None, starts, layout, self._pad_id)).to(self._device)
        stream = torch.cuda.Stream(self._device)
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.model.forward_packed(unpack(layout, staged))
        torch.cuda.current_stream(self._device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with capturing(graph, self._device, self._pool):
            out = self.model.forward_packed(unpack(layout, staged))
        entry = (graph, staged, out)
        self._graphs[layout] = entry
        return entry


def make_runner(model, pad_id: int, cuda_graphs: bool, unpadded: bool):
    """A packed runner where the model and device allow it and ``unpadded`` is on, else the
    padded ``ModelRunner``."""
    refusal = model.packing_refusal() if unpadded and hasattr(model, "packing_refusal") else "unpadded is off"
    if refusal is None:
        log.info("%s on %s runs unpadded", getattr(model, "path", "model"), model.device)
        return PackedRunner(model, pad_id, cuda_graphs)
    if unpadded and torch.device(model.device).type == "cuda":
        log.info("%s on %s runs padded: %s", getattr(model, "path", "model"), model.device, refusal)
    return ModelRunner(model, pad_id, cuda_graphs)


__all__ = ["PackedRunner", "make_runner", "pack_arrays", "token_buckets"]
