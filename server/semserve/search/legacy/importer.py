"""Import a collection folder of the earlier format into its SQLite file, once, on first start.

The old files are read, never changed: the state they describe (snapshot, then every log from
the snapshot's generation on) is written into ``collection.sqlite3.importing`` in one
transaction, which is renamed into place only when complete; then the old files move into
``legacy/`` in the same folder, for the operator to delete. A crash at any step leaves either
the old files alone (the import runs again) or the new file (the move is finished).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from semserve.search.database import FILE_NAME, CollectionDatabase, CollectionSpec, DatabaseDamaged, Upsert
from semserve.search.files import fsync_dir
from semserve.search.legacy import records
from semserve.search.legacy.snapshot import FILE_NAME as SNAPSHOT_FILE
from semserve.search.legacy.snapshot import SnapshotError, read_snapshot
from semserve.search.legacy.wal import intact_record_after, iter_log_files, read_records

log = logging.getLogger(__name__)

SPEC_FILE = "collection.json"
KEPT_FOLDER = "legacy"


def needs_import(directory: Path) -> bool:
    return (directory / SPEC_FILE).exists()


def read_state(directory: Path) -> tuple[CollectionSpec, dict[str, tuple[str, dict[str, str], np.ndarray]]]:
    """The documents the old files hold, by id; DatabaseDamaged where they cannot be trusted."""
    try:
        raw = json.loads((directory / SPEC_FILE).read_text())
        spec = CollectionSpec(raw["name"], raw["model"], int(raw["dimension"]), raw["metric"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatabaseDamaged(f"{directory / SPEC_FILE} is unreadable ({exc})") from None
    documents: dict[str, tuple[str, dict[str, str], np.ndarray]] = {}
    try:
        snapshot = read_snapshot(directory)
    except (SnapshotError, ValueError, KeyError) as exc:
        raise DatabaseDamaged(f"{directory / SNAPSHOT_FILE} is damaged ({exc})") from None
    start = 1
    if snapshot is not None:
        start = snapshot.generation
        for doc_id, text, meta, vector in zip(snapshot.ids, snapshot.texts, snapshot.metadata, snapshot.vectors):
            documents[doc_id] = (text, meta, vector)
    logs = [(g, p) for g, p in iter_log_files(directory) if g >= start]
    for index, (_, path) in enumerate(logs):
        result = read_records(path)
        if result.torn is not None:
            data = path.read_bytes()
            later = intact_record_after(data, result.torn.offset)
            if index != len(logs) - 1 or later is not None:
                where = f"; an intact record follows at byte {later}" if later is not None else ""
                raise DatabaseDamaged(
                    f"{path} is damaged: {result.torn.reason} at byte {result.torn.offset}{where}"
                )
            log.warning("search: %s ends with a record cut by a crash (%s, %d bytes); it was never acknowledged",
                        path, result.torn.reason, result.torn.dropped_bytes)
        for payload in result.payloads:
            try:
                batch = records.decode(payload, spec.dimension)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise DatabaseDamaged(f"{path}: a record cannot be decoded ({exc})") from None
            if isinstance(batch, records.DeleteBatch):
                for doc_id in batch.ids:
                    documents.pop(doc_id, None)
            else:
                for doc_id, text, meta, vector in zip(batch.ids, batch.texts, batch.metadata, batch.vectors):
                    documents[doc_id] = (text, meta, vector)
    return spec, documents


def import_folder(directory: Path) -> None:
    """Write the folder's SQLite file from its old files, then put the old files aside."""
    target = directory / FILE_NAME
    if not target.exists():
        spec, documents = read_state(directory)
        partial = directory / (FILE_NAME + ".importing")
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            leftover.unlink(missing_ok=True)
        CollectionDatabase.create(partial, spec, durable=True)
        database = CollectionDatabase(partial, spec, durable=True)
        try:
            ids = list(documents)
            vectors = np.stack([documents[i][2] for i in ids]) if ids else np.empty((0, spec.dimension), np.float32)
            database.commit([Upsert(ids, [documents[i][0] for i in ids], [documents[i][1] for i in ids], vectors)])
        finally:
            database.close()  # the last close checkpoints: everything is in the main file
        partial.rename(target)
        fsync_dir(directory)
        log.info("search: imported collection %r from the earlier format: %d documents", spec.name, len(documents))
    kept = directory / KEPT_FOLDER
    kept.mkdir(exist_ok=True)
    old = [directory / SPEC_FILE, directory / SNAPSHOT_FILE, *(p for _, p in iter_log_files(directory))]
    for path in old:
        if path.exists():
            shutil.move(path, kept / path.name)
    fsync_dir(kept)
    fsync_dir(directory)
