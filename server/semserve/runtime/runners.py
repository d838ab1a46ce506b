"""Runners: pad a batch of token ids into tensors on the device and run a model head.

``prepare`` runs on the worker's prepare thread (host work and non-blocking copies);
``run`` on its compute thread. Outputs come back as float32 NumPy rows.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from semserve.runtime.tokenization import Encoded


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


def pad_batch(payloads: Sequence[Encoded], pad_id: int, device: torch.device) -> PaddedBatch:
    n = len(payloads)
    width = max(p.length for p in payloads)
    if device.type == "cuda":
        width = -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
    lengths = np.fromiter((p.length for p in payloads), dtype=np.int64, count=n)
    filled = np.arange(width) < lengths[:, None]
    total = int(lengths.sum())
    ids = np.full((n, width), pad_id, dtype=np.int64)
    ids[filled] = np.fromiter(itertools.chain.from_iterable(p.ids for p in payloads), dtype=np.int64, count=total)
    types = np.zeros((n, width), dtype=np.int64)
    if payloads[0].type_ids is not None:
        types[filled] = np.fromiter(
            itertools.chain.from_iterable(p.type_ids for p in payloads), dtype=np.int64, count=total
        )
    mask = filled.astype(np.int64)
    # One host-to-device copy for the three arrays. Pinning each batch's fresh host buffer
    # would cost more (a page-locking allocation) than the copy of a few hundred kilobytes.
    stacked = torch.from_numpy(np.stack((ids, mask, types)))
    if device.type != "cpu":
        stacked = stacked.to(device, non_blocking=True)
    return PaddedBatch(stacked[0], stacked[1], stacked[2])


class ModelRunner:
    """Any head that maps padded token ids to one output row per input: pooled embeddings for a
    bi-encoder (normalised if its folder says so), logits (one per label) for a cross-encoder."""

    def __init__(self, model, pad_id: int, cuda_graphs: bool = False):
        self.model = model
        self.device = str(model.device)
        self._device = torch.device(model.device)
        self._pad_id = pad_id
        self._kernels = _attention_backends if self._device.type == "cuda" else contextlib.nullcontext
        self._forward = model
        if cuda_graphs and self._device.type == "cuda":
            from semserve.runtime.cuda_graphs import GraphedForward

            self._forward = GraphedForward(model, self._device, model.max_tokens)

    def prepare(self, payloads: Sequence[Encoded]) -> PaddedBatch:
        return pad_batch(payloads, self._pad_id, self._device)

    def run(self, batch: PaddedBatch) -> np.ndarray:
        with torch.inference_mode(), self._kernels():
            out = self._forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
            return out.float().cpu().numpy()
