"""Runners: pad a batch of token ids into tensors on the device and run a model head.

``prepare`` runs on the worker's prepare thread (host work and non-blocking copies);
``run`` on its compute thread. Outputs come back as float32 NumPy rows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from semserve.engine.batching.requests import BatchPart


@dataclass
class PaddedBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor


# Padded lengths are rounded up to a multiple of this: fewer distinct shapes for the kernels
# to plan for, and tensor-core friendly sizes. Padding is masked, so results do not change.
PAD_MULTIPLE = 8


def _attention_backends():
    """SDPA kernels for padded batches on a GPU: memory-efficient attention (takes the padding
    mask) or flash. The cuDNN backend is left out: it builds a plan per new shape, and padded
    batches bring a new (batch, length) shape nearly every time."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])


def pad_parts(parts: Sequence[BatchPart], pad_id: int, device: torch.device) -> PaddedBatch:
    """Pad the inputs of a batch's parts into (rows, width) tensors, with a few array operations.

    Each part is a slice of one request's flat token buffer; rows follow the parts' order.
    """
    lengths = np.concatenate([request.lengths[indexes] for request, indexes in parts])
    if len(parts) == 1:
        request, indexes = parts[0]
        flat, types_flat = request.tokens.ids, request.tokens.type_ids
        starts = request.tokens.offsets[indexes]
    else:
        bases = np.cumsum([0] + [len(r.tokens.ids) for r, _ in parts[:-1]])
        flat = np.concatenate([r.tokens.ids for r, _ in parts])
        types_flat = None
        if parts[0][0].tokens.type_ids is not None:
            types_flat = np.concatenate([r.tokens.type_ids for r, _ in parts])
        starts = np.concatenate([r.tokens.offsets[i] + b for (r, i), b in zip(parts, bases)])
    width = max(int(lengths.max()), 1)
    if device.type == "cuda":
        width = -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
    columns = np.arange(width)
    filled = columns < lengths[:, None]
    positions = np.where(filled, starts[:, None] + columns, 0)
    stacked = np.zeros((3, len(lengths), width), dtype=np.int64)
    if flat.size:
        stacked[0] = np.where(filled, flat[positions], pad_id)
        if types_flat is not None:
            stacked[2] = np.where(filled, types_flat[positions], 0)
    else:
        stacked[0] = pad_id
    stacked[1] = filled
    # One host-to-device copy for the three arrays. Pinning each batch's fresh host buffer
    # would cost more (a page-locking allocation) than the copy of a few hundred kilobytes.
    tensor = torch.from_numpy(stacked)
    if device.type != "cpu":
        tensor = tensor.to(device, non_blocking=True)
    return PaddedBatch(tensor[0], tensor[1], tensor[2])


def queue_outputs(out: torch.Tensor) -> np.ndarray | tuple[torch.Tensor, torch.cuda.Event]:
    """A batch's float32 outputs on their way to host memory. On a GPU this returns before the
    device has computed them (they are in a page-locked buffer once the event completes; the next
    batch's work queues behind it on the same stream, which also keeps a CUDA graph's static
    output intact until copied). Elsewhere they are returned at once."""
    if out.device.type != "cuda":
        return out.cpu().numpy()
    host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(out, non_blocking=True)
    # A blocking event: the collect thread sleeps until the batch is done instead of
    # spinning a core (CUDA's default wait), a core the front ends can use.
    done = torch.cuda.Event(blocking=True)
    done.record()
    return host, done


def collect_outputs(handle: np.ndarray | tuple[torch.Tensor, torch.cuda.Event]) -> np.ndarray:
    """Wait (without the GIL) for a launched batch and return its rows; the page-locked
    buffer is copied out so that it returns to torch's cache at once."""
    if isinstance(handle, np.ndarray):
        return handle
    host, done = handle
    done.synchronize()
    return host.numpy().copy()


class ModelRunner:
    """Any head that maps padded token ids to one output row per input: pooled embeddings for a
    bi-encoder (normalised if its folder says so), logits (one per label) for a cross-encoder."""

    execution = "padded"

    def __init__(self, model, pad_id: int, cuda_graphs: bool = False):
        self.model = model
        self.device = str(model.device)
        self._device = torch.device(model.device)
        self._pad_id = pad_id
        self._kernels = _attention_backends if self._device.type == "cuda" else contextlib.nullcontext
        # On a GPU ``launch`` returns before the device has run the batch (see worker.py).
        self.asynchronous = self._device.type == "cuda"
        self._forward = model
        if cuda_graphs and self._device.type == "cuda":
            from semserve.engine.runtime.cuda_graphs import GraphedForward

            self._forward = GraphedForward(model, self._device, model.max_tokens)

    @property
    def graphs(self):
        """The CUDA graph replayer, or None (CPU, or graphs off)."""
        return self._forward if self._forward is not self.model else None

    def set_batch_limits(self, max_batch_tokens: int, max_batch_size: int) -> list[int]:
        """Size the graphs' batch buckets for the batcher's cap; returns them (for info)."""
        if self.graphs is None:
            return []
        from semserve.engine.runtime.cuda_graphs import graph_batch_sizes

        self.graphs.batch_buckets = graph_batch_sizes(max_batch_size)
        return list(self.graphs.batch_buckets)

    def capture_graphs(self, budget_s: float) -> tuple[int, int, float] | None:
        """Capture this replica's CUDA graphs ahead of serving (see cuda_graphs.py); None
        without graphs."""
        if self.graphs is None:
            return None
        with torch.inference_mode(), self._kernels():
            return self.graphs.capture_ahead(budget_s)

    def forward_shape(self, rows: int, length: int) -> None:
        """One forward pass of a full (rows, length) batch, as serving runs it (for calibration)."""
        ids = torch.full((rows, length), self._pad_id + 1, dtype=torch.long, device=self._device)
        mask = torch.ones_like(ids)
        self.run(PaddedBatch(ids, mask, torch.zeros_like(ids)))

    def prepare(self, parts: Sequence[BatchPart]) -> PaddedBatch:
        return pad_parts(parts, self._pad_id, self._device)

    def run(self, batch: PaddedBatch) -> np.ndarray:
        return self.collect(self.launch(batch))

    def launch(self, batch: PaddedBatch) -> np.ndarray | tuple[torch.Tensor, torch.cuda.Event]:
        """Queue the forward pass and the copy of its outputs to host memory (``queue_outputs``)."""
        with torch.inference_mode(), self._kernels():
            out = self._forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
            return queue_outputs(out.float())

    collect = staticmethod(collect_outputs)
