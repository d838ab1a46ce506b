"""One collection: its vectors as sharded tensors for scoring, its documents in a SQLite file.

A change is committed to the file first and applied to the shards only once committed, under
the collection's lock: a write that fails (a full disk, an I/O error) leaves nothing behind,
in memory or on disk, and a search never sees what a restart would not bring back. Concurrent
writers share one transaction (``GroupCommit``). Text and metadata are not held in memory:
GetDocuments, filters and the hits' text read the file, which readers can do while a writer
commits (SQLite's WAL mode).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from semserve.core.errors import CollectionFailed, CollectionNotFound, CoreError, ShuttingDown, Unavailable
from semserve.core.types import COSINE
from semserve.engine.stats import COMMIT_FAILURES, COMMIT_SECONDS
from semserve.search.compact import BINARY, FLOAT, INT8, binary_rows, int8_rows, stored_width
from semserve.search.database import FILE_NAME, CollectionDatabase, CollectionSpec, DatabaseDamaged, Delete, Upsert
from semserve.search.group_commit import GroupCommit
from semserve.search.shards import ShardedMatrix
from semserve.search import group_max, threshold_scan
from semserve.search.topk import fused_applies, ranked_topk

log = logging.getLogger(__name__)

_LOAD_ROWS = 65536  # rows placed into the shards per step at start


@dataclass
class Layout:
    """Where shards live and how the search scans them."""

    devices: list[str]
    dtypes: list[torch.dtype]
    initial_capacity: int = 64
    chunk_rows: int = 65536
    max_score_elements: int = 1 << 24


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class Collection:
    def __init__(self, spec: CollectionSpec, layout: Layout, database: CollectionDatabase,
                 directory: Path | None = None):
        self.spec = spec
        self.layout = layout
        self.database = database
        self.directory = directory
        compact = {INT8: torch.int8, BINARY: torch.uint8}.get(spec.storage)
        dtypes = layout.dtypes if compact is None else [compact] * len(layout.devices)
        self.matrix = ShardedMatrix(stored_width(spec.storage, spec.dimension), layout.devices, dtypes,
                                    layout.initial_capacity)
        for shard in self.matrix.shards:
            if fused_applies(shard.matrix, 1):
                group_max.warm_up(str(shard.matrix.device), shard.matrix.dtype, shard.matrix.shape[1])
                threshold_scan.warm_up(str(shard.matrix.device), shard.matrix.dtype, shard.matrix.shape[1])
        self.lock = threading.Lock()  # the shards and the filter masks
        self.dropped = False
        # Set when the collection can no longer serve (its file was found damaged while
        # writing, or the shards could not take a committed change); every call raises it.
        self.failure: CoreError | None = None
        self._mask_cache: dict[tuple, list[torch.Tensor]] = {}
        self._commits: GroupCommit[Upsert | Delete, int] = GroupCommit(self._commit_group, self._closed_error)
        database.closed_error = self._closed_error

    def _closed_error(self) -> CoreError:
        if self.dropped:
            return CollectionNotFound(f"collection {self.spec.name!r} was dropped")
        return ShuttingDown(f"collection {self.spec.name!r} is closed: the server is shutting down; retry on another server")

    @classmethod
    def open(cls, directory: Path, layout: Layout, durable: bool) -> "Collection":
        """Check and load a collection folder (raises DatabaseDamaged, leaving it untouched)."""
        path = directory / FILE_NAME
        spec, ids, vectors = CollectionDatabase.load(path)
        if spec.name != directory.name:
            raise DatabaseDamaged(f"{path} holds collection {spec.name!r}, not {directory.name!r}")
        collection = cls(spec, layout, CollectionDatabase(path, spec, durable), directory)
        for start in range(0, len(ids), _LOAD_ROWS):
            rows = collection.shard_rows(vectors[start : start + _LOAD_ROWS])
            collection.matrix.upsert(ids[start : start + _LOAD_ROWS], rows)
        return collection

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def check_usable(self) -> None:
        if self.dropped:
            raise CollectionNotFound(f"collection {self.spec.name!r} was dropped")
        if self.failure is not None:
            raise type(self.failure)(self.failure.message)

    # -- changes ---------------------------------------------------------------------------

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as the file stores them: float32, unit length for cosine."""
        vectors = np.asarray(vectors, dtype=np.float32)
        return normalize_rows(vectors) if self.spec.metric == COSINE else vectors

    def shard_rows(self, prepared: np.ndarray) -> np.ndarray:
        """Prepared vectors as the shards take them (int8 storage: search/compact.py)."""
        if self.spec.storage == INT8:
            return int8_rows(prepared)
        if self.spec.storage == BINARY:
            return binary_rows(prepared)
        return prepared

    def upsert(self, ids: list[str], texts: list[str], metadata: list[dict[str, str]], vectors: np.ndarray) -> None:
        """Insert or replace documents; returns once they are committed and searchable."""
        self.check_usable()
        self._commits.submit(Upsert(ids, texts, metadata, self.prepare(vectors)))

    def delete(self, ids: list[str]) -> int:
        """Delete documents; returns how many were present, once the delete is committed."""
        self.check_usable()
        return self._commits.submit(Delete(list(dict.fromkeys(ids))))

    def _commit_group(self, changes: Sequence[Upsert | Delete]) -> list[int]:
        self.check_usable()
        started = time.monotonic()
        try:
            deleted = self.database.commit(changes)
        except CoreError as exc:
            COMMIT_FAILURES.labels(self.spec.name, exc.code).inc()
            if isinstance(exc, DatabaseDamaged):
                self.failure = CollectionFailed(exc.message)
                log.error("search: collection %r FAILED: %s", self.spec.name, exc.message)
            raise
        COMMIT_SECONDS.labels(self.spec.name).observe(time.monotonic() - started)
        with self.lock:
            try:
                for change in changes:
                    if isinstance(change, Delete):
                        self.matrix.delete(change.ids)
                    else:
                        self.matrix.upsert(change.ids, self.shard_rows(change.vectors))
            except Exception as exc:  # e.g. out of device memory while a shard grows
                self.failure = Unavailable(
                    f"collection {self.spec.name!r} could not apply a committed write to its shards ({exc}); "
                    "restart the server to reload it from disk"
                )
                log.exception("search: collection %r FAILED while applying a committed write", self.spec.name)
                raise type(self.failure)(self.failure.message) from None
            finally:
                self._mask_cache.clear()
        return deleted

    # -- reads -----------------------------------------------------------------------------

    def get(self, ids: list[str], with_vectors: bool) -> tuple[list[tuple[str, str, dict, np.ndarray | None]], list[str]]:
        self.check_usable()
        found = self.database.documents(ids, with_vectors)
        documents = [(i, *found[i]) for i in ids if i in found]
        return documents, [i for i in ids if i not in found]

    def texts(self, ids: list[str]) -> dict[str, tuple[str, dict[str, str], None]]:
        """Text and metadata of the ids still present, for hits that asked for them."""
        self.check_usable()
        return self.database.documents(ids, with_vectors=False)

    def search(self, queries: np.ndarray, k: int, where: dict[str, str]) -> list[list[tuple[str, float]]]:
        """Top-k per query, best first, as (id, score); ``where`` is an equality filter. Exact for
        float storage; for int8 and binary, the scan's best ``k x rescore_multiplier`` rescored exactly."""
        ids, scores = self.search_columns(queries, k, where)
        return [list(zip(i, s)) for i, s in zip(ids, scores)]

    def search_columns(self, queries: np.ndarray, k: int, where: dict[str, str]
                       ) -> tuple[list[list[str]], list[list[float]]]:
        """``search`` as two lists per query, the ids and their scores, built without a Python
        step per hit where the storage allows."""
        self.check_usable()
        prepared = self.prepare(queries)
        wanted = k if self.spec.storage == FLOAT else k * self.spec.rescore_multiplier
        with self.lock:
            masks = self._masks(where)
            shards = [(s.matrix, s.used, m) for s, m in zip(self.matrix.shards, masks)]
            ranked = ranked_topk(shards, torch.from_numpy(prepared), wanted, self.layout.chunk_rows,
                                 self.layout.max_score_elements)
            ids, scores = ranked.columns([s.ids for s in self.matrix.shards])
        if self.spec.storage == FLOAT:
            return ids, scores
        rescored = self._rescore(prepared, [list(zip(i, s)) for i, s in zip(ids, scores)], k)
        return [[i for i, _ in q] for q in rescored], [[s for _, s in q] for q in rescored]

    def _rescore(self, queries: np.ndarray, candidates: list[list[tuple[str, float]]], k: int
                 ) -> list[list[tuple[str, float]]]:
        """Exact scores of each query's candidates from the float32 vectors in the file."""
        vectors = self.database.vectors({doc_id for hits in candidates for doc_id, _ in hits})
        out = []
        for query, hits in zip(queries, candidates):
            ids = [doc_id for doc_id, _ in hits if doc_id in vectors]  # deleted since the scan: dropped
            if not ids:
                out.append([])
                continue
            scores = np.stack([vectors[i] for i in ids]) @ query
            order = np.argsort(-scores, kind="stable")[:k]
            out.append([(ids[i], float(scores[i])) for i in order])
        return out

    def _masks(self, where: dict[str, str]) -> list[torch.Tensor | None]:
        """Per shard, the rows a search may return: live, and matching the filter (read from the file)."""
        if not where:
            return [s.live[: s.used] if s.dead else None for s in self.matrix.shards]
        key = tuple(sorted(where.items()))
        cached = self._mask_cache.get(key)
        if cached is not None:
            return cached
        keeps = [np.zeros(shard.used, dtype=bool) for shard in self.matrix.shards]
        for doc_id in self.database.matching(where):
            at = self.matrix.where.get(doc_id)
            if at is not None:
                keeps[at[0]][at[1]] = True
        masks = [torch.from_numpy(keep).to(shard.device) for keep, shard in zip(keeps, self.matrix.shards)]
        if len(self._mask_cache) >= 8:
            self._mask_cache.clear()
        self._mask_cache[key] = masks
        return masks

    def describe(self) -> dict:
        with self.lock:
            return {
                "count": len(self.matrix),
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

    def close(self) -> None:
        """Finish the commit in progress, refuse later writes and reads, close the file."""
        self._commits.close()
        self.database.close()
