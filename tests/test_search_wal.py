"""Durability pieces without a server: the log's torn-tail recovery, group commit, snapshots,
and a store that recovers collections (snapshot + log replay) exactly."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from semserve.config import SearchConfig
from semserve.search import records
from semserve.search.snapshot import SnapshotError, read_snapshot
from semserve.search.store import CollectionStore
from semserve.search.wal import HEADER, WriteAheadLog, read_records


def write_log(path: Path, payloads: list[bytes]) -> list[int]:
    """Write records; return the byte offset at which each one starts (and the end)."""
    wal = WriteAheadLog(path)
    offsets = [0]
    for p in payloads:
        wal.sync(wal.append(p))
        offsets.append(path.stat().st_size)
    wal.close()
    return offsets


PAYLOADS = [bytes([i]) * (10 + 7 * i) for i in range(6)]


@pytest.mark.parametrize("cut", ["header-1", "header-4", "header-7", "payload-1", "payload-half", "payload-all-but-1"])
def test_a_torn_last_record_is_skipped_reported_and_truncated(tmp_path, caplog, cut):
    path = tmp_path / "wal-00000001.log"
    offsets = write_log(path, PAYLOADS)
    last_start, end = offsets[-2], offsets[-1]
    payload_len = end - last_start - HEADER.size
    keep = {
        "header-1": 1, "header-4": 4, "header-7": 7, "payload-1": HEADER.size + 1,
        "payload-half": HEADER.size + payload_len // 2, "payload-all-but-1": HEADER.size + payload_len - 1,
    }[cut]
    with open(path, "r+b") as f:
        f.truncate(last_start + keep)
    with caplog.at_level(logging.WARNING):
        wal, result = WriteAheadLog.recover(path)
    assert result.payloads == PAYLOADS[:-1]
    assert result.torn is not None and result.torn.offset == last_start and result.torn.dropped_bytes == keep
    assert "dropping the last" in caplog.text
    # The torn bytes are gone: new records follow the last good one and read back intact.
    wal.sync(wal.append(b"after"))
    wal.close()
    again = read_records(path)
    assert again.payloads == [*PAYLOADS[:-1], b"after"] and again.torn is None


@pytest.mark.parametrize("flip_at", ["length", "crc", "payload-first", "payload-last"])
def test_a_corrupt_last_record_is_detected_by_its_checksum(tmp_path, flip_at):
    path = tmp_path / "wal-00000001.log"
    offsets = write_log(path, PAYLOADS)
    last_start, end = offsets[-2], offsets[-1]
    position = {"length": last_start + 1, "crc": last_start + 5, "payload-first": last_start + HEADER.size,
                "payload-last": end - 1}[flip_at]
    data = bytearray(path.read_bytes())
    data[position] ^= 0x40
    path.write_bytes(bytes(data))
    result = read_records(path)
    assert result.payloads == PAYLOADS[:-1]
    assert result.torn is not None and result.torn.offset == last_start


def test_group_commit_covers_concurrent_writers_with_few_fsyncs(tmp_path):
    wal = WriteAheadLog(tmp_path / "wal-00000001.log")
    threads, per_thread = 16, 20

    def writer(i):
        for j in range(per_thread):
            wal.sync(wal.append(f"{i}-{j}".encode()))

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wal.close()
    assert wal.records == threads * per_thread
    assert wal.fsyncs < threads * per_thread  # shared fsyncs (one per record would equal it)
    assert len(read_records(tmp_path / "wal-00000001.log").payloads) == threads * per_thread


def test_record_payloads_round_trip_exactly():
    vectors = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    batch = records.UpsertBatch(["a", "é", "c"], ["x", "", "z"], [{}, {"k": "v"}, {}], vectors)
    back = records.decode(records.encode_upsert(batch), 5)
    assert back.ids == batch.ids and back.texts == batch.texts and back.metadata == batch.metadata
    assert np.array_equal(back.vectors, vectors)
    assert records.decode(records.encode_delete(records.DeleteBatch(["a"])), 5).ids == ["a"]


def config(tmp_path, **kw) -> SearchConfig:
    return SearchConfig(data_dir=tmp_path, devices="cpu", shards_per_device=2, initial_capacity=4, **kw)


def open_store(tmp_path, **kw) -> CollectionStore:
    store = CollectionStore(config(tmp_path, **kw), ["cpu"])
    store.open()
    return store


def state(collection):
    ids = sorted(collection.documents)
    return ids, [collection.documents[i] for i in ids], collection.matrix.vectors(ids)


def test_store_recovers_from_log_only_from_snapshot_and_from_both(tmp_path):
    rng = np.random.default_rng(1)
    store = open_store(tmp_path)
    c = store.create("c", "", 6, "dot")
    vectors = rng.standard_normal((40, 6)).astype(np.float32)
    ids = [f"id{i}" for i in range(40)]
    c.upsert(ids[:20], ids[:20], [{"n": str(i)} for i in range(20)], vectors[:20]).wait()
    c.delete(ids[:5])[1].wait()
    expected = state(c)
    c.close()  # a crash after the fsyncs: no snapshot was written
    recovered = open_store(tmp_path).get("c")
    got = state(recovered)
    assert got[0] == expected[0] and got[1] == expected[1] and np.array_equal(got[2], expected[2])
    assert recovered.recovery.replayed_records == 2 and recovered.recovery.snapshot_documents == 0

    assert recovered.snapshot()  # now a snapshot, then more log records after it
    assert [p.name for p in sorted(tmp_path.glob("collections/c/wal-*.log"))] == ["wal-00000002.log"]
    recovered.upsert(ids[20:], ids[20:], [{} for _ in range(20)], vectors[20:]).wait()
    recovered.upsert(ids[:3], ["new"] * 3, [{}] * 3, vectors[30:33]).wait()
    expected = state(recovered)
    recovered.close()
    again = open_store(tmp_path).get("c")
    got = state(again)
    assert got[0] == expected[0] and got[1] == expected[1] and np.array_equal(got[2], expected[2])
    assert again.recovery.snapshot_documents == 15 and again.recovery.replayed_records == 2


def test_damaged_snapshot_is_refused(tmp_path):
    store = open_store(tmp_path)
    c = store.create("c", "", 2, "dot")
    c.upsert(["a"], ["a"], [{}], np.ones((1, 2), np.float32)).wait()
    c.snapshot()
    path = tmp_path / "collections" / "c" / "snapshot.bin"
    data = bytearray(path.read_bytes())
    data[20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError):
        read_snapshot(path.parent)


def test_drop_removes_the_folder_and_maintenance_snapshots_and_compacts(tmp_path):
    store = open_store(tmp_path, snapshot_every_records=2, compaction_threshold=0.2)
    c = store.create("keep", "", 3, "cosine")
    ids = [str(i) for i in range(10)]
    c.upsert(ids, ids, [{}] * 10, np.random.default_rng(2).standard_normal((10, 3))).wait()
    c.delete(ids[:5])[1].wait()
    store.create("gone", "", 3, "dot")
    store.drop("gone")
    assert not (tmp_path / "collections" / "gone").exists()
    store.maintain()
    assert (tmp_path / "collections" / "keep" / "snapshot.bin").exists()
    assert all(s.dead == 0 for s in c.matrix.shards)
    store.close()
    reopened = open_store(tmp_path)
    assert [x.spec.name for x in reopened.list()] == ["keep"]
    assert sorted(reopened.get("keep").documents) == ids[5:]
