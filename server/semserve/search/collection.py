"""One collection: its sharded vectors, documents (text and metadata in host memory), its log.

Every change runs under the collection's lock in three steps: append the record to the log,
apply it to memory, bump the version. Appending under the lock makes the log order the apply
order, so replay rebuilds exactly the state searches saw. The fsync happens after the lock is
released (``Ticket.wait``), so one fsync covers concurrent writers (group commit) and searches
are not held up by the disk; a change becomes visible to searches slightly before it is
acknowledged, never the other way round.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from semserve.core.errors import CollectionNotFound
from semserve.core.types import COSINE
from semserve.search import records
from semserve.search.shards import ShardedMatrix
from semserve.search.snapshot import SnapshotData, read_snapshot, write_snapshot
from semserve.search.topk import exact_topk
from semserve.search.wal import WriteAheadLog, fsync_dir, iter_log_files, log_path

log = logging.getLogger(__name__)

SPEC_FILE = "collection.json"


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    model: str
    dimension: int
    metric: str

    def write(self, directory: Path) -> None:
        """Atomically: a crash leaves no half-written spec."""
        temporary = directory / (SPEC_FILE + ".tmp")
        with open(temporary, "w") as f:
            json.dump({"name": self.name, "model": self.model, "dimension": self.dimension, "metric": self.metric}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, directory / SPEC_FILE)
        fsync_dir(directory)

    @staticmethod
    def read(directory: Path) -> "CollectionSpec":
        raw = json.loads((directory / SPEC_FILE).read_text())
        return CollectionSpec(raw["name"], raw["model"], int(raw["dimension"]), raw["metric"])


@dataclass
class Layout:
    """Where shards live and how the search scans them."""

    devices: list[str]
    dtypes: list[torch.dtype]
    initial_capacity: int = 64
    chunk_rows: int = 65536
    max_score_elements: int = 1 << 24


@dataclass
class Ticket:
    """A change applied in memory; ``wait`` returns once it is durable."""

    wal: WriteAheadLog | None = None
    seq: int = 0

    def wait(self) -> None:
        if self.wal is not None:
            self.wal.sync(self.seq)


@dataclass
class Recovery:
    snapshot_documents: int = 0
    replayed_records: int = 0
    torn_tails: list[str] = field(default_factory=list)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class Collection:
    def __init__(self, spec: CollectionSpec, layout: Layout, directory: Path | None):
        self.spec = spec
        self.layout = layout
        self.directory = directory
        self.matrix = ShardedMatrix(spec.dimension, layout.devices, layout.dtypes, layout.initial_capacity)
        self.documents: dict[str, tuple[str, dict[str, str]]] = {}
        self.lock = threading.Lock()
        # Serialises snapshots (maintenance and shutdown) without holding up writers.
        self._snapshot_lock = threading.Lock()
        self.wal: WriteAheadLog | None = None
        self.generation = 1
        self.records_since_snapshot = 0
        self.version = 0
        self.recovery = Recovery()
        self._mask_cache: dict[tuple, list[torch.Tensor]] = {}
        self.dropped = False

    # -- creation and recovery -------------------------------------------------------------

    @classmethod
    def create(cls, spec: CollectionSpec, layout: Layout, directory: Path | None) -> "Collection":
        collection = cls(spec, layout, directory)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=False)
            collection.wal = WriteAheadLog(log_path(directory, collection.generation))
            spec.write(directory)  # last: a folder without a spec is an unfinished create
            fsync_dir(directory.parent)
        return collection

    @classmethod
    def recover(cls, directory: Path, layout: Layout) -> "Collection":
        """Snapshot, then every log from the snapshot's generation on, in order; a torn tail is cut."""
        collection = cls(CollectionSpec.read(directory), layout, directory)
        snapshot = read_snapshot(directory)
        start = 1
        if snapshot is not None:
            start = snapshot.generation
            collection._apply(records.UpsertBatch(snapshot.ids, snapshot.texts, snapshot.metadata, snapshot.vectors))
            collection.recovery.snapshot_documents = len(snapshot.ids)
        logs = [(g, p) for g, p in iter_log_files(directory) if g >= start]
        for index, (generation, path) in enumerate(logs):
            wal, result = WriteAheadLog.recover(path)
            for payload in result.payloads:
                collection._apply(records.decode(payload, collection.spec.dimension))
            collection.recovery.replayed_records += len(result.payloads)
            if result.torn is not None:
                collection.recovery.torn_tails.append(
                    f"{path.name}: {result.torn.reason} at byte {result.torn.offset}, "
                    f"{result.torn.dropped_bytes} bytes dropped"
                )
            if index == len(logs) - 1:
                collection.wal, collection.generation = wal, generation
                collection.records_since_snapshot = len(result.payloads)
            else:
                wal.close()
        if collection.wal is None:
            collection.generation = start
            collection.wal = WriteAheadLog(log_path(directory, start))
            fsync_dir(directory)
        for generation, path in iter_log_files(directory):
            if generation < start:  # left over by a snapshot that finished just before a crash
                path.unlink()
        return collection

    # -- changes ---------------------------------------------------------------------------

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as the shards store them: float32, unit length for cosine."""
        vectors = np.asarray(vectors, dtype=np.float32)
        return normalize_rows(vectors) if self.spec.metric == COSINE else vectors

    def upsert(self, ids: list[str], texts: list[str], metadata: list[dict[str, str]], vectors: np.ndarray) -> Ticket:
        batch = records.UpsertBatch(ids, texts, metadata, self.prepare(vectors))
        with self.lock:
            ticket = self._log(records.encode_upsert(batch))
            self._apply(batch)
        return ticket

    def delete(self, ids: list[str]) -> tuple[int, Ticket]:
        with self.lock:
            present = [i for i in dict.fromkeys(ids) if i in self.documents]
            if not present:
                return 0, Ticket()
            batch = records.DeleteBatch(present)
            ticket = self._log(records.encode_delete(batch))
            self._apply(batch)
        return len(present), ticket

    def pending_writes(self) -> Ticket:
        """A ticket for everything applied so far: its ``wait`` returns once all of it is durable."""
        with self.lock:
            if self.dropped:
                raise CollectionNotFound(f"collection {self.spec.name!r} was dropped")
            if self.wal is None:
                return Ticket()
            return Ticket(self.wal, self.wal.written_seq)

    def _log(self, payload: bytes) -> Ticket:
        if self.dropped:
            raise CollectionNotFound(f"collection {self.spec.name!r} was dropped")
        if self.wal is None:
            return Ticket()
        seq = self.wal.append(payload)
        self.records_since_snapshot += 1
        return Ticket(self.wal, seq)

    def _apply(self, batch: records.UpsertBatch | records.DeleteBatch) -> None:
        if isinstance(batch, records.DeleteBatch):
            for doc_id in self.matrix.delete(batch.ids):
                del self.documents[doc_id]
        else:
            self.matrix.upsert(batch.ids, batch.vectors)
            for doc_id, text, meta in zip(batch.ids, batch.texts, batch.metadata):
                self.documents[doc_id] = (text, meta)
        self.version += 1
        self._mask_cache.clear()

    # -- reads -----------------------------------------------------------------------------

    def get(self, ids: list[str], with_vectors: bool) -> tuple[list[tuple[str, str, dict, np.ndarray | None]], list[str]]:
        with self.lock:
            found = [i for i in ids if i in self.documents]
            missing = [i for i in ids if i not in self.documents]
            vectors = self.matrix.vectors(found) if with_vectors else [None] * len(found)
            return [(i, *self.documents[i], v) for i, v in zip(found, vectors)], missing

    def search(self, queries: np.ndarray, k: int, where: dict[str, str]) -> list[list[tuple[str, float]]]:
        """Exact top-k per query, best first, as (id, score); ``where`` is an equality filter."""
        prepared = torch.from_numpy(self.prepare(queries))
        with self.lock:
            masks = self._masks(where)
            shards = [(s.matrix, s.used, m) for s, m in zip(self.matrix.shards, masks)]
            hits = exact_topk(shards, prepared, k, self.layout.chunk_rows, self.layout.max_score_elements)
            return [[(self.matrix.shards[s].ids[r], score) for s, r, score in q] for q in hits]

    def _masks(self, where: dict[str, str]) -> list[torch.Tensor | None]:
        """Per shard, the rows a search may return: live, and matching the filter."""
        if not where:
            return [s.live[: s.used] if s.dead else None for s in self.matrix.shards]
        key = tuple(sorted(where.items()))
        cached = self._mask_cache.get(key)
        if cached is not None:
            return cached
        items = list(where.items())
        masks = []
        for shard in self.matrix.shards:
            keep = np.zeros(shard.used, dtype=bool)
            for row, doc_id in enumerate(shard.ids):
                if doc_id is not None:
                    meta = self.documents[doc_id][1]
                    keep[row] = all(meta.get(k) == v for k, v in items)
            masks.append(torch.from_numpy(keep).to(shard.device))
        if len(self._mask_cache) >= 8:
            self._mask_cache.clear()
        self._mask_cache[key] = masks
        return masks

    def describe(self) -> dict:
        with self.lock:
            return {
                "count": len(self.documents),
                "shards": len(self.matrix.shards),
                "devices": [s.device for s in self.matrix.shards],
                "bytes": self.matrix.nbytes,
                "dtype": str(self.matrix.shards[0].matrix.dtype).removeprefix("torch."),
            }

    # -- maintenance -----------------------------------------------------------------------

    def compact(self, threshold: float) -> int:
        """Rewrite the shards whose share of tombstones exceeds ``threshold``; rows reclaimed."""
        reclaimed = 0
        for index, shard in enumerate(self.matrix.shards):
            if self.matrix.dead_fraction(shard) <= threshold:
                continue
            with self.lock:  # one shard at a time, so searches wait for one copy at most
                reclaimed += self.matrix.compact(index)
                self._mask_cache.clear()
        return reclaimed

    def snapshot(self) -> bool:
        """Write a snapshot and restart the log; False when nothing changed since the last one.

        Under the lock only the log switch and a host copy of the state happen; the file is
        written afterwards, while writers go on appending to the new log.
        """
        if self.directory is None:
            return False
        with self._snapshot_lock:
            with self.lock:
                if self.dropped or self.records_since_snapshot == 0:
                    return False
                old_wal = self.wal
                self.generation += 1
                self.wal = WriteAheadLog(log_path(self.directory, self.generation))
                fsync_dir(self.directory)
                self.records_since_snapshot = 0
                ids, vectors = self.matrix.live_rows()
                texts = [self.documents[i][0] for i in ids]
                metadata = [self.documents[i][1] for i in ids]
                generation = self.generation
            old_wal.close()
            write_snapshot(self.directory, SnapshotData(generation, ids, texts, metadata, vectors))
            for old_generation, path in iter_log_files(self.directory):
                if old_generation < generation:
                    path.unlink()
            return True

    def close(self) -> None:
        with self.lock:
            if self.wal is not None:
                self.wal.close()
