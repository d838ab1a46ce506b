"""Storage faults seen over gRPC: a damaged collection file and a full disk.

A damaged collection is FAILED (GetCollection and ListCollections say so and why), its calls
answer DATA_LOSS naming it, every other collection serves, and the server starts. A full disk
(a real one: a small tmpfs, where the test may mount one) fails the write that hit it with
RESOURCE_EXHAUSTED "disk full" and nothing of it applied; once space is freed writes succeed,
and all acknowledged ones survive a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import TEST_FRONTENDS, server_config, start_server
from semserve.config import ModelSpec, SearchConfig
from semserve_client import SemserveClient
from semserve_client.v1 import search_pb2
import test_lifecycle

DIMENSION = 64


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from model_factory import make_tiny_st_encoder

    return make_tiny_st_encoder(tmp_path_factory.mktemp("enc"))


def vectors(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIMENSION)).astype(np.float32)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_a_damaged_collection_is_failed_and_the_others_serve(tmp_path, encoder_dir):
    config = server_config(encoders=[ModelSpec("tiny", encoder_dir, "encoder")],
                           search=SearchConfig(devices="cpu", data_dir=tmp_path / "data"))
    server = start_server(config)
    try:
        with SemserveClient(server.address, timeout=60) as c:
            for name in ("bad", "good"):
                c.create_collection(name, dimension=DIMENSION, metric="dot")
                c.upsert(name, [f"{name}{i}" for i in range(500)], [f"text {i}" for i in range(500)],
                         embeddings=vectors(500, seed=1))
    finally:
        server.stop()  # graceful: each file is checkpointed and complete
    path = tmp_path / "data" / "collections" / "bad" / "collection.sqlite3"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))

    server = start_server(config)  # starts despite the damage
    try:
        with SemserveClient(server.address, timeout=60) as c:
            listed = {info.name: info for info in c.list_collections()}
            assert listed["bad"].state == search_pb2.COLLECTION_STATE_FAILED
            assert listed["good"].state == search_pb2.COLLECTION_STATE_READY and listed["good"].count == 500
            bad = c.get_collection("bad")
            assert bad.state == search_pb2.COLLECTION_STATE_FAILED and "malformed" in bad.failure_reason
            calls = [
                lambda: c.search_collection("bad", [[1.0] * DIMENSION], top_k=3),
                lambda: c.upsert("bad", ["x"], ["x"], embeddings=vectors(1, seed=2)),
                lambda: c.get_documents("bad", ["bad1"]),
                lambda: c.delete("bad", ["bad1"]),
            ]
            for call in calls:
                code, message = status_of(call)
                assert code == grpc.StatusCode.DATA_LOSS and "collection 'bad' is FAILED" in message, (code, message)
            code, _ = status_of(lambda: c.create_collection("bad", dimension=DIMENSION, metric="dot"))
            assert code == grpc.StatusCode.ALREADY_EXISTS
            hits = c.search_collection("good", vectors(1, seed=1)[:1], top_k=1).results[0].hits
            assert hits[0].id == "good0"
            assert bytes(data) == path.read_bytes(), "the damaged file must be left as found"
            c.drop_collection("bad")
            assert [info.name for info in c.list_collections()] == ["good"]
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs, mounted where the test may (root, or a container allowed to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the injected ENOSPC tests in "
                    "test_search_store.py still run")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.skipif(TEST_FRONTENDS > 0, reason="kills the process that owns the store; runs in the one-process pass")
def test_a_full_disk_fails_the_write_applies_nothing_and_later_writes_survive_kill_9(small_disk, encoder_dir):
    filler = small_disk / "filler"
    filler.write_bytes(bytes(2 << 20))  # freed later, as an operator would free space
    args = ("--data-dir", str(small_disk / "data"), "--encoder", f"tiny={encoder_dir}")
    proc, address, lines = test_lifecycle.start_server(*args)
    acknowledged: list[str] = []
    try:
        with SemserveClient(address, timeout=60) as c:
            c.create_collection("docs", dimension=DIMENSION, metric="dot")
            refused = None
            for batch in range(400):
                ids = [f"b{batch}-{i}" for i in range(100)]
                try:
                    c.upsert("docs", ids, [f"text {batch} {i}" for i in range(100)], embeddings=vectors(100, batch))
                    acknowledged += ids
                except grpc.RpcError as exc:
                    refused = (exc.code(), exc.details(), ids)
                    break
            assert refused is not None, "the disk never filled"
            code, message, refused_ids = refused
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith("disk full"), (code, message)
            assert c.get_collection("docs").count == len(acknowledged)
            assert list(c.get_documents("docs", refused_ids[:5]).missing_ids) == refused_ids[:5]
            filler.unlink()  # space freed
            more = [f"after-{i}" for i in range(100)]
            c.upsert("docs", more, ["after"] * 100, embeddings=vectors(100, seed=999))
            acknowledged += more
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    proc, address, lines = test_lifecycle.start_server(*args)
    try:
        with SemserveClient(address, timeout=60) as c:
            assert c.get_collection("docs").count == len(acknowledged)
            got = c.get_documents("docs", acknowledged[::97], include_embeddings=True)
            assert not got.missing_ids
            last = c.get_documents("docs", ["after-7"], include_embeddings=True).documents[0]
            assert np.array_equal(np.array(last.embedding, dtype=np.float32), vectors(100, seed=999)[7])
    finally:
        proc.kill()
        proc.wait(10)
