"""A crasher, in the style of Qdrant's: writers stream upserts and deletes into a durable
collection while the server is SIGKILLed at random moments, again and again. After every restart
each key must show its last acknowledged state, and an operation that was in flight at the kill
must be applied to all of its keys or to none.

`make test` runs 8 kills; `SEMSERVE_CRASHER_KILLS=100 .venv/bin/python -m pytest tests/test_crasher.py`
is the long run (docs/operations.md has its result). The seed is printed, and
SEMSERVE_CRASHER_SEED repeats a run."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from semserve_client import SemserveClient
from conftest import TEST_FRONTENDS
from test_lifecycle import start_server

KILLS = int(os.environ.get("SEMSERVE_CRASHER_KILLS", "8"))
SEED = int(os.environ.get("SEMSERVE_CRASHER_SEED", str(random.randrange(1 << 30))))
WRITERS = 3
KEYS_PER_WRITER = 40
DIMENSION = 4
ABSENT = None  # a key's state: None (absent) or the version of the upsert that wrote it

pytestmark = pytest.mark.skipif(
    TEST_FRONTENDS != 0, reason="kills the process that owns the store; runs in the one-process pass"
)


def key(writer: int, k: int) -> str:
    return f"w{writer}-k{k}"


def vector(writer: int, k: int, version: int) -> list[float]:
    return [float(version), float(writer), float(k), 1.0]  # exact in float32, metric dot


def text(writer: int, k: int, version: int) -> str:
    return f"writer {writer} key {k} version {version}"


@dataclass
class Writer:
    """One writer's keys: their acknowledged states, and the operation in flight if any."""

    index: int
    rng: random.Random
    acked: dict[int, int | None] = field(default_factory=dict)
    pending: tuple[str, list[int], int] | None = None
    version: int = 0
    done: int = 0

    def run(self, address: str, halt: threading.Event) -> None:
        with SemserveClient(address, timeout=30) as c:
            while not halt.is_set():
                keys = self.rng.sample(range(KEYS_PER_WRITER), self.rng.randint(1, 8))
                self.version += 1
                op = "upsert" if self.rng.random() < 0.7 else "delete"
                self.pending = (op, keys, self.version)
                try:
                    if op == "upsert":
                        c.upsert("crash", [key(self.index, k) for k in keys],
                                 [text(self.index, k, self.version) for k in keys],
                                 embeddings=[vector(self.index, k, self.version) for k in keys])
                    else:
                        c.delete("crash", [key(self.index, k) for k in keys])
                except grpc.RpcError:
                    return  # the server died with this operation in flight: its outcome is unknown
                for k in keys:
                    self.acked[k] = self.version if op == "upsert" else ABSENT
                self.pending = None
                self.done += 1


def observed_states(c: SemserveClient, writer: int) -> dict[int, int | None]:
    """Every key's state as the server has it, each document checked whole (vector and text)."""
    got = c.get_documents("crash", [key(writer, k) for k in range(KEYS_PER_WRITER)], include_embeddings=True)
    states: dict[int, int | None] = dict.fromkeys(range(KEYS_PER_WRITER), ABSENT)
    for doc in got.documents:
        k = int(doc.id.split("-k")[1])
        version = int(doc.embedding[0])
        assert list(doc.embedding) == vector(writer, k, version), f"{doc.id}: torn vector {list(doc.embedding)}"
        assert doc.text == text(writer, k, version), f"{doc.id}: text {doc.text!r} does not match version {version}"
        states[k] = version
    return states


def check(writer: Writer, states: dict[int, int | None]) -> None:
    """Acknowledged states kept; the operation in flight applied to all of its keys or none."""
    in_flight = set(writer.pending[1]) if writer.pending else set()
    for k in range(KEYS_PER_WRITER):
        if k not in in_flight:
            assert states[k] == writer.acked.get(k, ABSENT), (
                f"key {key(writer.index, k)}: acknowledged {writer.acked.get(k, ABSENT)}, found {states[k]}")
    if writer.pending:
        op, keys, version = writer.pending
        applied = [states[k] == (version if op == "upsert" else ABSENT) for k in keys]
        before = [states[k] == writer.acked.get(k, ABSENT) for k in keys]
        assert all(applied) or all(before), (
            f"{op} v{version} of writer {writer.index} was in flight at the kill and is half applied: "
            f"{[(k, states[k], writer.acked.get(k, ABSENT)) for k in keys]}")


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from model_factory import make_tiny_st_encoder

    return make_tiny_st_encoder(tmp_path_factory.mktemp("enc"))


def test_random_sigkills_lose_no_acknowledged_write_and_half_apply_nothing(tmp_path, encoder_dir):
    print(f"crasher: {KILLS} kills, seed {SEED}")
    rng = random.Random(SEED)
    args = ("--data-dir", str(tmp_path / "data"), "--encoder", f"tiny={encoder_dir}", "--batch-policy", "fixed")
    writers = [Writer(i, random.Random(rng.random())) for i in range(WRITERS)]
    proc, address, lines = start_server(*args)
    try:
        with SemserveClient(address, timeout=30) as c:
            c.create_collection("crash", dimension=DIMENSION, metric="dot")
        for kill in range(KILLS):
            halt = threading.Event()
            threads = [threading.Thread(target=w.run, args=(address, halt)) for w in writers]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.2, 1.5))
            proc.send_signal(signal.SIGKILL)  # while the writers have calls in flight
            proc.wait(10)
            halt.set()
            for t in threads:
                t.join(30)
            proc, address, lines = start_server(*args)
            with SemserveClient(address, timeout=30) as c:
                present = 0
                for w in writers:
                    states = observed_states(c, w.index)
                    check(w, states)
                    w.acked, w.pending = states, None  # the in-flight outcome is now known
                    present += sum(v is not ABSENT for v in states.values())
                assert c.get_collection("crash").count == present
        print(f"crasher: {KILLS} kills survived, {sum(w.done for w in writers)} operations acknowledged")
        assert sum(w.done for w in writers) >= KILLS * 5, "too few operations ran between kills"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
