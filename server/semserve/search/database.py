"""One collection's documents on disk: a SQLite file holding ids, text, metadata and vectors.

Why SQLite rather than a log of our own: it is the most tested embedded storage engine there
is, and the faults a hand-written log got wrong (a full disk mid-record, damage in the middle
of a file, a zero-filled tail after power loss) are exactly what its journal, page checksums
of the WAL and "database disk image is malformed" checks exist for. WAL journal mode with
``synchronous=FULL``: a commit returns once the WAL is fsynced, readers never block the writer,
and a crash at any moment leaves the last committed transaction. One transaction carries a
whole group of writers (``commit``), so N concurrent upserts cost about one fsync.

The vectors are stored as float32 blobs, exactly as the shards received them (already
normalised for cosine), and loaded into the shard tensors at start; text and metadata stay
here and are read when a call needs them, so host memory holds only ids and vectors.

Schema (``format`` 1)::

    spec(key TEXT PRIMARY KEY, value TEXT)            name, model, dimension, metric, format,
                                                      document_prompt, query_prompt (absent: ""),
                                                      storage, rescore_multiplier (absent: float, 4)
    documents(row INTEGER PRIMARY KEY, id TEXT UNIQUE, text TEXT, metadata TEXT (JSON), vector BLOB)
"""

from __future__ import annotations

import errno
import json
import logging
import queue
import sqlite3
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from semserve.core.errors import CoreError, DataLoss, DiskFull, Unavailable
from semserve.core.types import DEFAULT_RESCORE_MULTIPLIER, FLOAT_STORAGE
from semserve.search.wal_check import wal_damage

log = logging.getLogger(__name__)

FILE_NAME = "collection.sqlite3"
FORMAT = 1
# SQLite allows 32766 bound parameters; ids are read in chunks well below that.
_IDS_PER_QUERY = 500
# Reader connections per collection: enough for the engine's blocking threads to read at once.
_READERS = 4

# Primary result codes (https://www.sqlite.org/rescode.html).
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26

_SCHEMA = (
    "CREATE TABLE spec(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE documents(row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, "
    "metadata TEXT NOT NULL, vector BLOB NOT NULL)",
)


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    model: str
    dimension: int
    metric: str
    # Prepended to text the collection embeds (documents, queries); "" for the model's default.
    document_prompt: str = ""
    query_prompt: str = ""
    # How the shards hold vectors: "float" (--search-dtype) or "int8" (search/compact.py), and
    # how many candidates per result an int8 scan hands to exact rescoring.
    storage: str = FLOAT_STORAGE
    rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER


@dataclass
class Upsert:
    ids: list[str]
    texts: list[str]
    metadata: list[dict[str, str]]
    vectors: np.ndarray  # (len(ids), dimension) float32, as the shards store them


@dataclass
class Delete:
    ids: list[str]


Change = Upsert | Delete


class DatabaseDamaged(DataLoss):
    """The file is not a readable SQLite database of a collection: the collection is failed."""


def storage_error(exc: BaseException, name: str, doing: str) -> CoreError:
    """The status a caller sees for a storage failure while ``doing`` something to collection ``name``."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_FULL or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        return DiskFull(
            f"disk full: collection {name!r} could not {doing}; nothing of this request was applied. "
            "Free space on the data dir's disk and retry"
        )
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return DatabaseDamaged(f"collection {name!r}: its file is damaged ({exc}); it was not changed")
    return Unavailable(f"collection {name!r}: storage error while trying to {doing}: {exc}; retry later")


def _connect(path: Path, mode: str, durable: bool, immutable: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit); ``mode`` is ro, rw or rwc.

    ``immutable`` (read-only, no WAL file present) reads the main file without creating the
    ``-wal`` and ``-shm`` files a WAL database otherwise gets: how a file is checked before it is
    trusted, so that a damaged one is left exactly as found."""
    flags = f"mode={mode}&immutable=1" if immutable else f"mode={mode}"
    connection = sqlite3.connect(
        f"file:{urllib.parse.quote(str(path))}?{flags}", uri=True, isolation_level=None, check_same_thread=False, timeout=30.0
    )
    if mode != "ro":
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
    return connection


def _vector_bytes(vectors: np.ndarray) -> list[bytes]:
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    return [row.tobytes() for row in rows]


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def read_spec(connection: sqlite3.Connection) -> CollectionSpec:
    raw = dict(connection.execute("SELECT key, value FROM spec").fetchall())
    if int(raw.get("format", 0)) != FORMAT:
        raise DatabaseDamaged(f"unknown collection file format {raw.get('format')!r} (this server reads {FORMAT})")
    return CollectionSpec(raw["name"], raw["model"], int(raw["dimension"]), raw["metric"],
                          raw.get("document_prompt", ""), raw.get("query_prompt", ""), raw.get("storage", FLOAT_STORAGE),
                          int(raw.get("rescore_multiplier", DEFAULT_RESCORE_MULTIPLIER)))


class CollectionDatabase:
    """The SQLite file of one collection: a writer connection and a small pool of readers.

    The writer is used by one thread at a time (the collection's group-commit leader). Readers
    see the last committed transaction, never a group still being written.
    """

    def __init__(self, path: Path, spec: CollectionSpec, durable: bool):
        self.path = path
        self.spec = spec
        self.durable = durable
        self._writer = _connect(path, "rw", durable)
        self._readers: queue.SimpleQueue[sqlite3.Connection | None] = queue.SimpleQueue()
        for _ in range(_READERS):
            self._readers.put(_connect(path, "ro", durable))
        # What a read gets once the file is closed (the collection was dropped or the server stops).
        self.closed_error: Callable[[], CoreError] = lambda: Unavailable(
            f"collection {spec.name!r} is closed; retry on another server")

    # -- creation and loading --------------------------------------------------------------

    @staticmethod
    def create(path: Path, spec: CollectionSpec, durable: bool) -> None:
        """Write a new, empty collection file holding ``spec`` (one transaction)."""
        try:
            connection = _connect(path, "rwc", durable)
        except (sqlite3.Error, OSError) as exc:
            raise storage_error(exc, spec.name, "be created") from None
        try:
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                connection.execute(statement)
            values = {"name": spec.name, "model": spec.model, "dimension": spec.dimension, "metric": spec.metric,
                      "document_prompt": spec.document_prompt, "query_prompt": spec.query_prompt,
                      "storage": spec.storage, "rescore_multiplier": spec.rescore_multiplier, "format": FORMAT}
            connection.executemany("INSERT INTO spec VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])
            connection.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            raise storage_error(exc, spec.name, "be created") from None
        finally:
            connection.close()

    @staticmethod
    def load(path: Path) -> tuple[CollectionSpec, list[str], np.ndarray]:
        """Check the file and read the spec and every (id, vector), without writing to it.

        Read-only, so a damaged file is left exactly as found: ``quick_check`` walks every page
        of every table and index; the full read of the vectors would meet any damage in them.
        """
        if not path.exists():
            raise DatabaseDamaged(f"{path} is missing")
        damage = wal_damage(Path(f"{path}-wal"))
        if damage is not None:
            raise DatabaseDamaged(damage)
        # With a WAL left by a crash, its committed transactions must be read (and -shm may be
        # rebuilt: an index of the WAL, not data); without one the main file is all there is.
        connection = _connect(path, "ro", True, immutable=not Path(f"{path}-wal").exists())
        try:
            problems = [line for row in connection.execute("PRAGMA quick_check(5)") for line in row[0].splitlines()]
            if problems != ["ok"]:
                problems = [p for p in problems if not p.startswith("***")]
                raise DatabaseDamaged(f"{path} is damaged (database disk image is malformed: {'; '.join(problems)})")
            spec = read_spec(connection)
            ids: list[str] = []
            parts: list[np.ndarray] = []
            cursor = connection.execute("SELECT id, vector FROM documents ORDER BY row")
            while rows := cursor.fetchmany(65536):
                ids.extend(r[0] for r in rows)
                blob = b"".join(r[1] for r in rows)
                if len(blob) != len(rows) * spec.dimension * 4:
                    raise DatabaseDamaged(f"{path}: a stored vector does not have dimension {spec.dimension}")
                parts.append(np.frombuffer(blob, dtype="<f4").reshape(len(rows), spec.dimension))
            vectors = np.concatenate(parts) if parts else np.empty((0, spec.dimension), np.float32)
            return spec, ids, vectors.astype(np.float32, copy=False)
        except sqlite3.DatabaseError as exc:
            raise DatabaseDamaged(f"{path} is not a readable collection file: {exc}") from None
        except (KeyError, ValueError) as exc:
            raise DatabaseDamaged(f"{path}: its spec is incomplete or invalid ({exc})") from None
        finally:
            connection.close()

    # -- writes ----------------------------------------------------------------------------

    def commit(self, changes: Sequence[Change]) -> list[int]:
        """Write ``changes`` in order in one transaction; per change, how many rows it deleted.

        On any failure the transaction is rolled back and nothing of it is on disk; the error is
        raised as the status the callers will see (``storage_error``).
        """
        connection = self._writer
        deleted: list[int] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for change in changes:
                if isinstance(change, Delete):
                    before = connection.total_changes
                    connection.executemany("DELETE FROM documents WHERE id = ?", [(i,) for i in change.ids])
                    deleted.append(connection.total_changes - before)
                else:
                    metadata = [json.dumps(m, ensure_ascii=False, separators=(",", ":")) for m in change.metadata]
                    connection.executemany(
                        "INSERT INTO documents(id, text, metadata, vector) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET text = excluded.text, metadata = excluded.metadata, "
                        "vector = excluded.vector",
                        zip(change.ids, change.texts, metadata, _vector_bytes(change.vectors)),
                    )
                    deleted.append(0)
            connection.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._rollback()
            raise storage_error(exc, self.spec.name, "commit this write") from None
        return deleted

    def _rollback(self) -> None:
        try:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("collection %r: rollback failed", self.spec.name)

    # -- reads -----------------------------------------------------------------------------

    @contextmanager
    def _reader(self, doing: str) -> Iterator[sqlite3.Connection]:
        connection = self._readers.get()
        if connection is None:  # closed: pass the marker on to the next reader
            self._readers.put(None)
            raise self.closed_error()
        try:
            yield connection
        except sqlite3.Error as exc:
            raise storage_error(exc, self.spec.name, doing) from None
        finally:
            self._readers.put(connection)

    def _rows_by_id(self, columns: str, ids: Iterable[str], doing: str) -> list[tuple]:
        """``SELECT id, columns`` of the ids present, a bounded number of ids per query."""
        unique = list(dict.fromkeys(ids))
        rows: list[tuple] = []
        with self._reader(doing) as connection:
            for start in range(0, len(unique), _IDS_PER_QUERY):
                chunk = unique[start : start + _IDS_PER_QUERY]
                query = f"SELECT id, {columns} FROM documents WHERE id IN ({','.join('?' * len(chunk))})"
                rows.extend(connection.execute(query, chunk))
        return rows

    def documents(self, ids: Sequence[str], with_vectors: bool = True
                  ) -> dict[str, tuple[str, dict[str, str], np.ndarray | None]]:
        """Text, metadata and (when asked) the stored vector of each id present, by id."""
        columns = "text, metadata, vector" if with_vectors else "text, metadata, NULL"
        return {doc_id: (text, json.loads(metadata), _vector(vector) if vector is not None else None)
                for doc_id, text, metadata, vector in self._rows_by_id(columns, ids, "read documents")}

    def vectors(self, ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored float32 vector of each id present."""
        return {doc_id: _vector(vector) for doc_id, vector in self._rows_by_id("vector", ids, "read vectors")}

    def matching(self, where: dict[str, str]) -> list[str]:
        """Ids whose metadata holds every ``key: value`` of ``where`` (an equality filter)."""
        clauses = " AND ".join(
            "EXISTS (SELECT 1 FROM json_each(documents.metadata) AS m WHERE m.key = ? AND m.value = ?)" for _ in where
        )
        parameters = [p for item in where.items() for p in item]
        with self._reader("evaluate a filter") as connection:
            return [row[0] for row in connection.execute(f"SELECT id FROM documents WHERE {clauses}", parameters)]

    def count(self) -> int:
        with self._reader("count documents") as connection:
            return connection.execute("SELECT count(*) FROM documents").fetchone()[0]

    def close(self) -> None:
        """Close every connection once no read uses it; the last close checkpoints the WAL into
        the main file. Callers make sure no commit runs (the collection's GroupCommit.close)."""
        for _ in range(_READERS):  # waits for reads in progress to hand their connection back
            reader = self._readers.get()
            if reader is None:  # closed already
                self._readers.put(None)
                return
            reader.close()
        self._readers.put(None)
        try:
            self._writer.close()
        except sqlite3.Error:
            log.exception("collection %r: closing its file failed", self.spec.name)
