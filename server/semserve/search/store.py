"""All collections of a server: one folder each under ``<data_dir>/collections/``, opened on start.

Each collection has its own SQLite file (``<name>/collection.sqlite3``), so creating or dropping
one never touches the others, and a damaged one cannot keep the rest from serving: it is listed
as FAILED with the reason, its files are left exactly as found, and its calls answer DATA_LOSS
until an operator restores or drops it. Without a data dir the files live in a scratch folder
removed at shutdown: collections do not survive a restart, and host memory still holds only ids
and vectors.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import torch

from semserve.config import ConfigError, SearchConfig
from semserve.core.errors import CollectionExists, CollectionFailed, CollectionNotFound, CoreError
from semserve.core.types import DEFAULT_RESCORE_MULTIPLIER, FLOAT_STORAGE
from semserve.engine.runtime.devices import resolve_devices, resolve_dtype
from semserve.search.collection import Collection, Layout
from semserve.search.database import FILE_NAME, CollectionDatabase, CollectionSpec
from semserve.search.files import fsync_dir
from semserve.search.legacy import importer

log = logging.getLogger(__name__)

# Folders in collections/ that are not collections: a create or drop cut short by a crash.
_UNFINISHED_PREFIX = "."


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
        self.durable = config.data_dir is not None
        self.root = Path(config.data_dir) / "collections" if self.durable else None
        self._collections: dict[str, Collection] = {}
        # Collections that could not be opened: name -> why (their folders are left as found).
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open every collection on disk (blocking; before serving). Never raises for one collection."""
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="semserve-collections-"))
            log.info("search: no --data-dir, collections are held in %s and lost on restart", self.root)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if directory.name.startswith(_UNFINISHED_PREFIX):
                log.warning("search: removing %s (a create or drop cut short)", directory)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self._open_one(directory)
        log.info("search: data dir %s, %d collection(s) serving, %d failed",
                 self.root.parent, len(self._collections), len(self._failed))

    def _open_one(self, directory: Path) -> None:
        name = directory.name
        try:
            if importer.needs_import(directory):
                importer.import_folder(directory)
            collection = Collection.open(directory, self.layout, durable=True)
        except CoreError as exc:
            self._failed[name] = exc.message
            log.error("search: collection %r FAILED: %s; its files are left as they are", name, exc.message)
            return
        except Exception as exc:  # a fault no rule foresaw must still not stop the server
            self._failed[name] = f"{type(exc).__name__}: {exc}"
            log.exception("search: collection %r FAILED while opening; its files are left as they are", name)
            return
        self._collections[name] = collection
        log.info("search: opened collection %r: %d documents", name, len(collection.matrix))

    def create(self, name: str, model: str, dimension: int, metric: str, document_prompt: str = "",
               query_prompt: str = "", storage: str = FLOAT_STORAGE,
               rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER) -> Collection:
        with self._lock:
            if name in self._collections or name in self._failed:
                raise CollectionExists(f"collection {name!r} already exists")
            spec = CollectionSpec(name, model, dimension, metric, document_prompt, query_prompt, storage,
                                  rescore_multiplier)
            # Built under a hidden name and renamed into place: a crash leaves no half collection.
            building = self.root / f"{_UNFINISHED_PREFIX}creating-{name}-{uuid.uuid4().hex}"
            building.mkdir()
            try:
                CollectionDatabase.create(building / FILE_NAME, spec, self.durable)
                directory = self.root / name
                building.rename(directory)
                if self.durable:
                    fsync_dir(self.root)
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise
            collection = Collection.open(directory, self.layout, self.durable)
            self._collections[name] = collection
            return collection

    def drop(self, name: str) -> None:
        with self._lock:
            collection = self._collections.pop(name, None)
            failed = self._failed.pop(name, None)
            if collection is None and failed is None:
                raise CollectionNotFound(self._missing(name))
        if collection is not None:
            with collection.lock:
                collection.dropped = True
            collection.close()
        # Renamed out of sight first: a crash during the removal leaves a hidden folder, removed on start.
        directory = self.root / name
        if not directory.exists():  # a failed collection whose folder an operator removed
            return
        trash = self.root / f"{_UNFINISHED_PREFIX}dropping-{name}-{uuid.uuid4().hex}"
        directory.rename(trash)
        if self.durable:
            fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def get(self, name: str) -> Collection:
        """A collection that serves; CollectionFailed for one that could not be opened."""
        collection = self._collections.get(name)
        if collection is None:
            if name in self._failed:
                raise CollectionFailed(self.failure_message(name))
            raise CollectionNotFound(self._missing(name))
        return collection

    def failure_message(self, name: str) -> str:
        return (f"collection {name!r} is FAILED: {self._failed[name]}. Its files are left as they were found: "
                "restore its folder and restart, or drop it")

    @staticmethod
    def _missing(name: str) -> str:
        # Only the name asked for: other collections' names are not the caller's to learn here.
        return f"no collection named {name!r}; ListCollections shows the collections there are"

    def list(self) -> list[Collection]:
        return [self._collections[n] for n in sorted(self._collections)]

    def failed(self) -> dict[str, str]:
        """Collections that could not be opened, by name, with the reason."""
        return dict(self._failed)

    def maintain(self) -> None:
        """Compact shards with many tombstones."""
        for collection in self.list():
            if collection.failed:
                continue
            reclaimed = collection.compact(self.config.compaction_threshold)
            if reclaimed:
                log.info("search: compacted %r, %d deleted rows reclaimed", collection.spec.name, reclaimed)

    def close(self) -> None:
        """Close every file (checkpointing its WAL); a scratch root is removed."""
        for collection in self.list():
            try:
                collection.close()
            except Exception:
                log.exception("search: closing collection %r failed", collection.spec.name)
        if not self.durable and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
