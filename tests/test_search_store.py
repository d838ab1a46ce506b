"""The collection store on SQLite, below gRPC: commits, group commit, a full disk (injected at the
storage layer and from SQLite itself), damaged or missing files, and the import of the earlier
on-disk format. Each fault has one exact outcome: the write fails with nothing applied, or the
collection is FAILED with its files left byte for byte as found; the store never fails to open."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from semserve.config import SearchConfig
from semserve.core.errors import CollectionFailed, DiskFull
from semserve.search.database import FILE_NAME
from semserve.search.legacy import records
from semserve.search.legacy.snapshot import SnapshotData, write_snapshot
from semserve.search.legacy.wal import encode_record, log_path
from semserve.search.store import CollectionStore

DIMENSION = 4


def open_store(data_dir: Path, **overrides) -> CollectionStore:
    store = CollectionStore(SearchConfig(data_dir=str(data_dir), devices="cpu", **overrides), ["cpu"])
    store.open()
    return store


def documents(count: int, start: int = 0, tag: str = "d"):
    ids = [f"{tag}{i}" for i in range(start, start + count)]
    texts = [f"text of {i}" for i in ids]
    metadata = [{"parity": str(i % 2), "tag": tag} for i in range(start, start + count)]
    vectors = np.random.default_rng(start).standard_normal((count, DIMENSION)).astype(np.float32)
    return ids, texts, metadata, vectors


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes: proof that nothing was changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def crash_copy(data_dir: Path, target: Path) -> Path:
    """The files as a kill -9 would leave them: copied while the store is still open."""
    shutil.copytree(data_dir, target)
    return target


def test_writes_are_committed_before_they_return_and_reads_come_from_the_file(tmp_path):
    store = open_store(tmp_path / "data")
    c = store.create("docs", "", DIMENSION, "dot")
    ids, texts, metadata, vectors = documents(50)
    c.upsert(ids, texts, metadata, vectors)
    assert c.delete(["d1", "d2", "missing", "d1"]) == 2
    # Not closed: the copy is what a crash would leave, and it holds every acknowledged write.
    copy = crash_copy(tmp_path / "data", tmp_path / "crashed")
    reopened = open_store(copy)
    got, missing = reopened.get("docs").get(["d0", "d1", "d49"], with_vectors=True)
    assert missing == ["d1"]
    assert [(i, t, m) for i, t, m, _ in got] == [("d0", "text of d0", metadata[0]), ("d49", "text of d49", metadata[49])]
    assert np.array_equal(got[0][3], vectors[0]) and np.array_equal(got[1][3], vectors[49])
    hits = reopened.get("docs").search(vectors[10:11], 1, {"parity": "0"})
    assert hits[0][0][0] == "d10"
    assert reopened.get("docs").describe()["count"] == 48
    reopened.close()
    store.close()


def test_concurrent_writers_share_one_commit(tmp_path):
    store = open_store(tmp_path / "data")
    c = store.create("docs", "", DIMENSION, "dot")
    real_commit = c.database.commit

    def slow_commit(changes):  # holds the first commit long enough for every other writer to queue
        time.sleep(0.2)
        return real_commit(changes)

    c.database.commit = slow_commit
    writers = 8
    threads = [threading.Thread(target=c.upsert, args=documents(10, start=100 * i)) for i in range(writers)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert c.describe()["count"] == writers * 10
    assert c._commits.groups <= 3, c._commits.groups  # the first writer alone, then the rest together
    store.close()


class _FailingConnection:
    """A writer connection whose writes hit a full disk (ENOSPC) after the transaction began."""

    def __init__(self, real):
        self._real = real

    def executemany(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_disk_full_injected_at_the_storage_layer_applies_nothing_and_later_writes_survive(tmp_path):
    store = open_store(tmp_path / "data")
    c = store.create("docs", "", DIMENSION, "dot")
    c.upsert(*documents(10))
    real = c.database._writer
    c.database._writer = _FailingConnection(real)
    with pytest.raises(DiskFull, match="disk full: collection 'docs'.*nothing of this request was applied"):
        c.upsert(*documents(5, start=10))
    with pytest.raises(DiskFull):
        c.delete(["d0"])
    assert c.describe()["count"] == 10 and c.get(["d10", "d0"], False)[1] == ["d10"]
    assert c.search(documents(1, start=10)[3], 20, {})[0] and "d10" not in {h for h, _ in c.search(
        documents(1, start=10)[3], 20, {})[0]}
    c.database._writer = real  # space freed
    c.upsert(*documents(5, start=10))
    assert c.delete(["d0"]) == 1
    reopened = open_store(crash_copy(tmp_path / "data", tmp_path / "crashed"))
    assert reopened.get("docs").describe()["count"] == 14
    reopened.close()
    store.close()


def test_sqlite_reporting_a_full_disk_rolls_the_group_back(tmp_path):
    store = open_store(tmp_path / "data")
    c = store.create("docs", "", DIMENSION, "dot")
    c.upsert(*documents(10))
    writer = c.database._writer
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL once the file must grow
    big = documents(2000, start=10)
    with pytest.raises(DiskFull, match="disk full"):
        c.upsert(*big)
    assert c.describe()["count"] == 10 and c.database.count() == 10
    writer.execute("PRAGMA max_page_count = 1073741823")
    c.upsert(*big)
    assert c.database.count() == 2010 and c.describe()["count"] == 2010
    store.close()
    reopened = open_store(tmp_path / "data")
    assert reopened.get("docs").describe()["count"] == 2010
    reopened.close()


def _garbage_in_the_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = 4096 * (len(data) // 4096 // 2)
    data[page : page + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _zero_filled_tail(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-8192:] = bytes(8192)
    path.write_bytes(bytes(data))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _deleted(path: Path) -> None:
    path.unlink()


def _not_a_database(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:16] = b"definitely not!!"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_garbage_in_the_middle, _zero_filled_tail, _truncated, _deleted, _not_a_database],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_collection_file_fails_that_collection_only_and_is_left_untouched(tmp_path, damage):
    store = open_store(tmp_path / "data")
    for name in ("bad", "good"):
        store.create(name, "", DIMENSION, "dot").upsert(*documents(600, tag=name))
    store.close()  # checkpointed: everything is in the main files
    folder = tmp_path / "data" / "collections" / "bad"
    damage(folder / FILE_NAME)
    before = fingerprint(folder)

    reopened = open_store(tmp_path / "data")  # never raises
    assert set(reopened.failed()) == {"bad"}
    reason = reopened.failed()["bad"]
    assert "collection.sqlite3" in reason, reason
    with pytest.raises(CollectionFailed, match="collection 'bad' is FAILED"):
        reopened.get("bad")
    good = reopened.get("good")
    assert good.describe()["count"] == 600 and good.get(["good7"], False)[0][0][1] == "text of good7"
    reopened.close()
    assert fingerprint(folder) == before, "a failed collection's files must be left as found"

    again = open_store(tmp_path / "data")
    assert set(again.failed()) == {"bad"}  # still failed, still untouched
    again.drop("bad")  # the operator gives it up: only then are its files removed
    assert not folder.exists() and [c.spec.name for c in again.list()] == ["good"]
    again.close()


def test_a_create_cut_short_leaves_nothing_behind(tmp_path):
    store = open_store(tmp_path / "data")
    store.create("kept", "", DIMENSION, "dot")
    store.close()
    leftover = tmp_path / "data" / "collections" / ".creating-x-123"
    leftover.mkdir()
    (leftover / FILE_NAME).write_bytes(b"half")
    reopened = open_store(tmp_path / "data")
    assert not leftover.exists() and not reopened.failed() and [c.spec.name for c in reopened.list()] == ["kept"]
    reopened.close()


# -- the earlier format -------------------------------------------------------------------

def _legacy_folder(root: Path, torn_tail: bytes = b"") -> tuple[Path, dict]:
    """A collection folder as the earlier server wrote it: spec, snapshot (generation 2), a log."""
    folder = root / "collections" / "old"
    folder.mkdir(parents=True)
    (folder / "collection.json").write_text(json.dumps({"name": "old", "model": "", "dimension": DIMENSION,
                                                        "metric": "dot"}))
    ids, texts, metadata, vectors = documents(3, tag="s")
    write_snapshot(folder, SnapshotData(2, ids, texts, metadata, vectors))
    later = documents(2, start=10, tag="l")
    log = encode_record(records.encode_upsert(records.UpsertBatch(*later)))
    log += encode_record(records.encode_delete(records.DeleteBatch(["s0"])))
    log += encode_record(records.encode_upsert(records.UpsertBatch(["s1"], ["replaced"], [{}], later[3][:1])))
    log_path(folder, 1).write_bytes(b"stale: before the snapshot, never read")
    log_path(folder, 2).write_bytes(log + torn_tail)
    expected = {"s1": ("replaced", {}, later[3][0]), "s2": (texts[2], metadata[2], vectors[2]),
                "l10": (later[1][0], later[2][0], later[3][0]), "l11": (later[1][1], later[2][1], later[3][1])}
    return folder, expected


def test_a_data_dir_of_the_earlier_format_is_imported_once(tmp_path):
    torn = encode_record(records.encode_delete(records.DeleteBatch(["s2"])))[:-3]  # cut by a crash
    folder, expected = _legacy_folder(tmp_path / "data", torn_tail=torn)
    store = open_store(tmp_path / "data")
    c = store.get("old")
    got, missing = c.get(sorted(expected) + ["s0"], with_vectors=True)
    assert missing == ["s0"]
    for doc_id, text, meta, vector in got:
        assert (text, meta) == expected[doc_id][:2] and np.array_equal(vector, expected[doc_id][2])
    assert sorted(p.name for p in (folder / "legacy").iterdir()) == [
        "collection.json", "snapshot.bin", "wal-00000001.log", "wal-00000002.log"]
    store.close()
    reopened = open_store(tmp_path / "data")
    assert reopened.get("old").describe()["count"] == 4 and not reopened.failed()
    reopened.close()


def test_damage_in_the_middle_of_an_old_log_is_refused_not_truncated(tmp_path):
    folder, _ = _legacy_folder(tmp_path / "data")
    path = log_path(folder, 2)
    data = bytearray(path.read_bytes())
    data[20:36] = b"\xff" * 16  # inside the first record; two intact records follow
    path.write_bytes(bytes(data))
    before = fingerprint(folder)
    store = open_store(tmp_path / "data")
    assert "intact record follows" in store.failed()["old"]
    store.close()
    assert fingerprint(folder) == before


# -- the SQLite WAL -----------------------------------------------------------------------

def _wal_frames(path: Path) -> list[tuple[int, bool]]:
    """(offset, is a commit frame) of every frame of a WAL file."""
    import struct

    data = path.read_bytes()
    page_size = struct.unpack_from(">I", data, 8)[0]
    frames = []
    for offset in range(32, len(data) - 24 - page_size + 1, 24 + page_size):
        frames.append((offset, struct.unpack_from(">I", data, offset + 4)[0] != 0))
    return frames


def _crashed_with_five_transactions_in_the_wal(tmp_path: Path) -> Path:
    store = open_store(tmp_path / "data")
    c = store.create("docs", "", DIMENSION, "dot")
    c.database._writer.execute("PRAGMA wal_autocheckpoint = 0")  # every transaction stays in the WAL
    for batch in range(5):
        c.upsert(*documents(20, start=20 * batch))
    copy = crash_copy(tmp_path / "data", tmp_path / "crashed")
    store.close()
    return copy / "collections" / "docs" / f"{FILE_NAME}-wal"


def test_damage_in_the_middle_of_the_sqlite_wal_fails_the_collection_instead_of_losing_what_follows(tmp_path):
    wal = _crashed_with_five_transactions_in_the_wal(tmp_path)
    first, _ = _wal_frames(wal)[0]
    data = bytearray(wal.read_bytes())
    data[first + 100 : first + 116] = b"\xee" * 16  # in the first transaction's first page
    wal.write_bytes(bytes(data))
    before = fingerprint(wal.parent)
    store = open_store(tmp_path / "crashed")
    assert "transactions committed after it would be lost" in store.failed()["docs"], store.failed()
    store.close()
    assert fingerprint(wal.parent) == before


def test_a_torn_last_transaction_in_the_sqlite_wal_is_the_crash_s_unacknowledged_write(tmp_path):
    wal = _crashed_with_five_transactions_in_the_wal(tmp_path)
    last, is_commit = _wal_frames(wal)[-1]
    assert is_commit
    data = bytearray(wal.read_bytes())
    data[last + 100 : last + 116] = b"\xee" * 16
    wal.write_bytes(bytes(data))
    store = open_store(tmp_path / "crashed")
    assert not store.failed()
    assert store.get("docs").describe()["count"] == 80  # the four transactions before the torn one
    store.close()


def test_a_drop_during_writes_and_reads_answers_not_found_never_a_storage_error(tmp_path):
    from semserve.core.errors import CollectionNotFound

    store = open_store(tmp_path / "data")
    c = store.create("docs", "", DIMENSION, "dot")
    outcomes: list[str] = []
    stop = threading.Event()

    def work(seed: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                c.upsert(*documents(5, start=1000 * seed + n))
                c.get([f"d{1000 * seed}"], False)
                c.search(documents(1, start=seed)[3], 3, {"parity": "1"})
                n += 5
            except CollectionNotFound:
                outcomes.append("not found")
                return
            except Exception as exc:  # anything else is a bug
                outcomes.append(repr(exc))
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    store.drop("docs")
    time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(10)
    assert outcomes == ["not found"] * 4, outcomes
    store.close()
