"""All collections of a server: under ``<data_dir>/collections/<name>/``, recovered on start.

Each collection has its own folder (spec, snapshot, logs), so creating or dropping one never
touches the others and recovery of one damaged collection cannot block the rest. Without a
data dir everything lives in memory and nothing survives a restart.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from pathlib import Path

import torch

from semserve.config import ConfigError, SearchConfig
from semserve.engine.runtime.devices import resolve_devices, resolve_dtype
from semserve.core.errors import CollectionExists, CollectionNotFound
from semserve.search.collection import SPEC_FILE, Collection, CollectionSpec, Layout
from semserve.search.wal import fsync_dir

log = logging.getLogger(__name__)



def search_layout(config: SearchConfig, model_devices: list[str]) -> Layout:
    """Shard devices and dtypes from the config: ``shards_per_device`` shards on each device."""
    spec = (config.devices or "auto").strip().lower()
    devices = list(model_devices) if spec == "auto" else resolve_devices(spec)
    shard_devices = [d for d in devices for _ in range(config.shards_per_device)]
    dtypes = [resolve_dtype(config.dtype, d) for d in shard_devices]
    for device, dtype in zip(shard_devices, dtypes):
        if device == "cpu" and dtype == torch.float16:
            log.warning("search shards in float16 on the CPU: scoring will be slow; float32 is the CPU default")
    if not shard_devices:
        raise ConfigError("no search devices")
    return Layout(shard_devices, dtypes, config.initial_capacity, config.chunk_rows, config.max_score_elements)


class CollectionStore:
    def __init__(self, config: SearchConfig, model_devices: list[str]):
        self.config = config
        self.layout = search_layout(config, model_devices)
        self.root = Path(config.data_dir) / "collections" if config.data_dir is not None else None
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()

    @property
    def durable(self) -> bool:
        return self.root is not None

    def open(self) -> None:
        """Recover every collection on disk (blocking; before serving)."""
        if self.root is None:
            log.info("search: no --data-dir, collections are held in memory only and lost on restart")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        trash = self.root.parent / "trash"
        if trash.exists():  # drops interrupted by a crash
            shutil.rmtree(trash, ignore_errors=True)
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if not (directory / SPEC_FILE).exists():
                log.warning("search: %s has no %s (a create cut short); removing it", directory, SPEC_FILE)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            collection = Collection.recover(directory, self.layout)
            self._collections[collection.spec.name] = collection
            r = collection.recovery
            log.info(
                "search: recovered collection %r: %d documents (%d from the snapshot, %d log records replayed)",
                collection.spec.name, len(collection.documents), r.snapshot_documents, r.replayed_records,
            )
            for note in r.torn_tails:
                log.warning("search: collection %r: torn log tail skipped: %s", collection.spec.name, note)
        log.info("search: data dir %s, %d collection(s)", self.root.parent, len(self._collections))

    def create(self, name: str, model: str, dimension: int, metric: str) -> Collection:
        with self._lock:
            if name in self._collections:
                raise CollectionExists(f"collection {name!r} already exists")
            spec = CollectionSpec(name, model, dimension, metric)
            directory = self.root / name if self.root is not None else None
            collection = Collection.create(spec, self.layout, directory)
            self._collections[name] = collection
            return collection

    def drop(self, name: str) -> None:
        with self._lock:
            collection = self._collections.pop(name, None)
            if collection is None:
                raise CollectionNotFound(self._missing(name))
        with collection.lock:
            collection.dropped = True
        collection.close()
        if collection.directory is not None:
            trash = self.root.parent / "trash"
            trash.mkdir(exist_ok=True)
            target = trash / f"{name}-{uuid.uuid4().hex}"
            collection.directory.rename(target)
            fsync_dir(self.root)
            shutil.rmtree(target, ignore_errors=True)

    def get(self, name: str) -> Collection:
        collection = self._collections.get(name)
        if collection is None:
            raise CollectionNotFound(self._missing(name))
        return collection

    def _missing(self, name: str) -> str:
        known = ", ".join(sorted(self._collections)) or "none"
        return f"no collection named {name!r}; collections: {known}"

    def list(self) -> list[Collection]:
        return [self._collections[n] for n in sorted(self._collections)]

    def maintain(self) -> None:
        """Snapshot collections with long logs, compact shards with many tombstones."""
        for collection in self.list():
            if collection.records_since_snapshot >= self.config.snapshot_every_records:
                collection.snapshot()
            reclaimed = collection.compact(self.config.compaction_threshold)
            if reclaimed:
                log.info("search: compacted %r, %d deleted rows reclaimed", collection.spec.name, reclaimed)

    def close(self) -> None:
        """Snapshot what changed (a fast next start) and close every log."""
        for collection in self.list():
            try:
                collection.snapshot()
            except OSError:
                log.exception("search: snapshot of %r at shutdown failed; its log is kept", collection.spec.name)
            collection.close()
