"""A collection's embeddings as shards of one matrix: preallocated tensors on the search devices.

Rows are appended to the least-filled shard, so shards stay balanced and every device holds a
similar share of the scan. A full shard doubles its capacity (one copy, amortised O(1) per row).
A replaced id keeps its row (written in place); a deleted id leaves a tombstone (``live`` false)
that scoring masks out until compaction rewrites the shard without it. Not thread-safe: the
collection's lock guards every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Shard:
    device: str
    matrix: torch.Tensor  # (capacity, dimension) in the storage dtype
    live: torch.Tensor  # (capacity,) bool on the device; false for tombstones and unused rows
    used: int = 0  # rows ever appended since the last compaction (live or tombstoned)
    dead: int = 0  # tombstoned rows among the used ones
    ids: list[str | None] = field(default_factory=list)  # row -> id (None for a tombstone)

    @property
    def capacity(self) -> int:
        return self.matrix.shape[0]

    @property
    def count(self) -> int:
        return self.used - self.dead

    def grow(self, needed: int) -> None:
        """Double the capacity until ``needed`` rows fit."""
        capacity = max(self.capacity, 1)
        while capacity < needed:
            capacity *= 2
        if capacity == self.capacity:
            return
        matrix = torch.zeros((capacity, self.matrix.shape[1]), dtype=self.matrix.dtype, device=self.device)
        matrix[: self.used] = self.matrix[: self.used]
        live = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        live[: self.used] = self.live[: self.used]
        self.matrix, self.live = matrix, live


class ShardedMatrix:
    def __init__(self, dimension: int, devices: list[str], dtypes: list[torch.dtype], initial_capacity: int):
        self.dimension = dimension
        self.initial_capacity = initial_capacity
        self.shards = [
            Shard(device=d, matrix=torch.zeros((initial_capacity, dimension), dtype=t, device=d),
                  live=torch.zeros(initial_capacity, dtype=torch.bool, device=d))
            for d, t in zip(devices, dtypes)
        ]
        self.where: dict[str, tuple[int, int]] = {}  # id -> (shard, row)

    def __len__(self) -> int:
        return len(self.where)

    @property
    def nbytes(self) -> int:
        return sum(s.matrix.numel() * s.matrix.element_size() for s in self.shards)

    def upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        """Write rows: existing ids in place, new ids appended to the least-filled shards.

        An id given twice keeps its last vector (the service refuses such requests; this keeps
        the matrix consistent whatever the caller).
        """
        if len(set(ids)) != len(ids):
            last = {doc_id: i for i, doc_id in enumerate(ids)}
            keep = sorted(last.values())
            ids, vectors = [ids[i] for i in keep], np.asarray(vectors)[keep]
        values = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        new_positions: dict[int, list[int]] = {}
        placed = [len(s.ids) for s in self.shards]
        for i, doc_id in enumerate(ids):
            at = self.where.get(doc_id)
            if at is not None:
                shard = self.shards[at[0]]
                shard.matrix[at[1]] = values[i].to(shard.device, shard.matrix.dtype)
                continue
            target = min(range(len(self.shards)), key=lambda s: placed[s] - self.shards[s].dead)
            row = placed[target]
            placed[target] += 1
            new_positions.setdefault(target, []).append(i)
            self.where[doc_id] = (target, row)
        for index, positions in new_positions.items():
            shard = self.shards[index]
            start = shard.used
            shard.grow(start + len(positions))
            rows = values[positions].to(shard.device, shard.matrix.dtype)
            shard.matrix[start : start + len(positions)] = rows
            shard.live[start : start + len(positions)] = True
            shard.ids.extend(ids[i] for i in positions)
            shard.used += len(positions)

    def delete(self, ids: list[str]) -> list[str]:
        """Tombstone the ids present; returns those that were."""
        removed = []
        for doc_id in ids:
            at = self.where.pop(doc_id, None)
            if at is None:
                continue
            shard = self.shards[at[0]]
            shard.live[at[1]] = False
            shard.ids[at[1]] = None
            shard.dead += 1
            removed.append(doc_id)
        return removed

    def dead_fraction(self, shard: Shard) -> float:
        return shard.dead / shard.used if shard.used else 0.0

    def compact(self, index: int) -> int:
        """Rewrite one shard without its tombstones; returns the rows reclaimed.

        Capacity shrinks to the smallest power-of-two multiple of the initial capacity that holds
        the live rows, so a shard emptied by deletes gives its memory back.
        """
        shard = self.shards[index]
        if not shard.dead:
            return 0
        keep = shard.live[: shard.used].nonzero().squeeze(1)
        capacity = self.initial_capacity
        while capacity < keep.numel():
            capacity *= 2
        matrix = torch.zeros((capacity, self.dimension), dtype=shard.matrix.dtype, device=shard.device)
        matrix[: keep.numel()] = shard.matrix[keep]
        live = torch.zeros(capacity, dtype=torch.bool, device=shard.device)
        live[: keep.numel()] = True
        ids = [i for i in shard.ids if i is not None]
        reclaimed = shard.dead
        shard.matrix, shard.live, shard.ids, shard.used, shard.dead = matrix, live, ids, len(ids), 0
        for row, doc_id in enumerate(ids):
            self.where[doc_id] = (index, row)
        return reclaimed
