"""Crash safety of the searcher: a `semserve serve --data-dir` child takes upserts from several
threads and is SIGKILLed mid-stream; after a restart every acknowledged batch is there with its
exact vectors and texts, and every unacknowledged batch is either wholly there or wholly absent.
A graceful stop then checkpoints the collection's SQLite WAL into its main file, which the next
start loads."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest

from semserve_client import SemserveClient
from test_lifecycle import start_server

DIMENSION = 8
BATCH = 20
THREADS = 4


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from model_factory import make_tiny_st_encoder

    return make_tiny_st_encoder(tmp_path_factory.mktemp("enc"))


def batch_vectors(thread: int, batch: int) -> np.ndarray:
    return np.random.default_rng(thread * 100_000 + batch).standard_normal((BATCH, DIMENSION)).astype(np.float32)


def batch_ids(thread: int, batch: int) -> list[str]:
    return [f"t{thread}-b{batch}-{i}" for i in range(BATCH)]


def stop(proc) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_acknowledged_upserts_survive_sigkill_and_nothing_is_half_applied(tmp_path, encoder_dir):
    data_dir = tmp_path / "data"
    args = ("--data-dir", str(data_dir), "--encoder", f"tiny={encoder_dir}")
    proc, address, _ = start_server(*args)
    acknowledged: list[tuple[int, int]] = []
    attempted: list[tuple[int, int]] = []
    lock = threading.Lock()
    halt = threading.Event()
    try:
        with SemserveClient(address, timeout=30) as c:
            # dot product: stored vectors are exactly the sent float32 values.
            c.create_collection("crash", dimension=DIMENSION, metric="dot")

            def writer(thread: int) -> None:
                with SemserveClient(address, timeout=30) as own:
                    batch = 0
                    while not halt.is_set():
                        with lock:
                            attempted.append((thread, batch))
                        try:
                            own.upsert("crash", batch_ids(thread, batch), [f"text {thread} {batch}"] * BATCH,
                                       embeddings=batch_vectors(thread, batch))
                        except grpc.RpcError:
                            return  # the server died with this call in flight
                        with lock:
                            acknowledged.append((thread, batch))
                        batch += 1

            workers = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
            for w in workers:
                w.start()
            deadline = time.monotonic() + 30
            while len(acknowledged) < 60 and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)  # mid-stream: the writers still have calls in flight
            halt.set()
            for w in workers:
                w.join(30)
        proc.wait(10)
        assert len(acknowledged) >= 60
    finally:
        stop(proc)

    proc, address, lines = start_server(*args)
    try:
        with SemserveClient(address, timeout=30) as c:
            info = c.get_collection("crash")
            assert info.durable
            present_total = 0
            for thread, batch in attempted:
                ids = batch_ids(thread, batch)
                got = c.get_documents("crash", ids, include_embeddings=True)
                present = len(got.documents)
                present_total += present
                if (thread, batch) in acknowledged:
                    assert present == BATCH, f"acknowledged batch {thread}/{batch} lost {BATCH - present} documents"
                    vectors = np.array([list(d.embedding) for d in got.documents], dtype=np.float32)
                    assert np.array_equal(vectors, batch_vectors(thread, batch))
                    assert all(d.text == f"text {thread} {batch}" for d in got.documents)
                else:
                    assert present in (0, BATCH), f"unacknowledged batch {thread}/{batch} is half there ({present})"
            assert info.count == present_total
            # The store is writable after recovery: a new write lands and is searchable.
            c.upsert("crash", ["after"], ["after"], embeddings=[[9.0] * DIMENSION])
            assert c.search_collection("crash", [1.0] * DIMENSION, top_k=1).results[0].hits[0].id == "after"
        proc.send_signal(signal.SIGTERM)  # graceful: the last close checkpoints the WAL
        assert proc.wait(30) == 0
    finally:
        stop(proc)

    folder = data_dir / "collections" / "crash"
    assert (folder / "collection.sqlite3").exists() and not (folder / "collection.sqlite3-wal").exists()
    proc, address, lines = start_server(*args)
    try:
        assert any(f"opened collection 'crash': {present_total + 1} documents" in line for line in lines)
        with SemserveClient(address, timeout=30) as c:
            assert c.get_collection("crash").count == present_total + 1
    finally:
        stop(proc)
