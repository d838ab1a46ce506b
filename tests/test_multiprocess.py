"""The multi-process server (`--frontends N`): front ends share the port, die and come back,
the engine's death ends the server, SIGTERM drains every process, model loads reach every
front end, and deadlines still drop work in the engine before compute. Real processes, real
gRPC channels on 127.0.0.1; every test bounds its own time."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from conftest import ProcessServer, server_config
from semserve.config import ModelSpec
from semserve_client import SemserveClient
from semserve_client.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, info_pb2

TOKEN = "mp-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from model_factory import make_tiny_st_encoder

    return make_tiny_st_encoder(tmp_path_factory.mktemp("tiny") / "tiny")


def tiny_config(folder: Path, **overrides):
    return server_config(encoders=[ModelSpec("tiny", folder, "encoder")], **overrides)


def fresh_channel(address: str) -> grpc.Channel:
    """A channel with a TCP connection of its own (gRPC otherwise shares one per target)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def embed_on_fresh_channels(address: str, count: int, model: str = "", retries: int = 0) -> int:
    """``count`` calls, each on a new connection; returns how many UNAVAILABLE answers were retried
    (``retries`` at most per call, as a client's retry policy would)."""
    retried = 0
    for i in range(count):
        for attempt in range(retries + 1):
            with fresh_channel(address) as channel:
                try:
                    reply = encoder_pb2_grpc.EncoderServiceStub(channel).Embed(
                        encoder_pb2.EmbedRequest(texts=[f"text {i}"], model=model), timeout=30
                    )
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == retries:
                        raise
                    retried += 1
                    time.sleep(0.05)
                    continue
                assert len(reply.embeddings) == 1
                break
    return retried


def frontends(address: str) -> list[info_pb2.FrontendInfo]:
    with SemserveClient(address) as c:
        return list(c.info().frontends)


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" in status.read_text()
    except FileNotFoundError:
        return True


def children(pid: int) -> dict[int, str]:
    """Child processes of pid and their command lines (Linux /proc)."""
    out = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out[int(child)] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


@pytest.fixture(scope="module")
def two_frontends(tiny_folder):
    server = ProcessServer(tiny_config(tiny_folder, admin_token=TOKEN, model_root=tiny_folder.parent, max_batch_size=8), frontends=2)
    yield server
    server.stop()


def test_calls_from_many_channels_land_on_more_than_one_front_end(two_frontends):
    embed_on_fresh_channels(two_frontends.address, 24)
    served = wait_for(
        lambda: [f for f in frontends(two_frontends.address) if f.requests > 0] if len(
            [f for f in frontends(two_frontends.address) if f.requests > 0]) >= 2 else None,
        10, "two front ends with requests",
    )
    assert {f.index for f in served} == {0, 1}
    assert len({f.pid for f in served}) == 2 and os.getpid() not in {f.pid for f in served}


def test_a_model_loaded_through_one_front_end_is_served_by_all(two_frontends, tiny_folder):
    with SemserveClient(two_frontends.address) as c:
        c.admin.LoadModel(
            info_pb2.LoadModelRequest(name="second", path=str(tiny_folder), kind=common_pb2.MODEL_KIND_ENCODER),
            metadata=AUTH, timeout=60,
        )
    before = {f.index: f.requests for f in frontends(two_frontends.address)}
    embed_on_fresh_channels(two_frontends.address, 24, model="second")  # each call may land on either
    after = wait_for(
        lambda: (lambda now: now if all(now[i] > before[i] for i in before) else None)(
            {f.index: f.requests for f in frontends(two_frontends.address)}),
        10, "both front ends to serve the new model",
    )
    assert len(after) == 2


def test_embed_upsert_and_search_replies_count_the_hop_to_the_engine(two_frontends):
    """Timing.transport_time_us is the front end <-> engine crossing; a vector search makes one
    crossing (no descriptor fetch first), and the engine still checks the vectors' width."""
    with SemserveClient(two_frontends.address) as c:
        embedded = c.encoder.Embed(encoder_pb2.EmbedRequest(model="tiny", texts=["a cat"]), timeout=30)
        assert 0 < embedded.timing.transport_time_us <= embedded.timing.total_time_us
        info = c.create_collection("hop", model="tiny")
        for stored in (c.upsert("hop", ["a", "b"], ["a cat", "a dog"]),
                       c.upsert("hop", ["c"], embeddings=[[-v for v in embedded.embeddings[0].values]])):
            assert 0 < stored.timing.transport_time_us <= stored.timing.total_time_us
        vector = list(embedded.embeddings[0].values)
        for queries in ([vector], "a cat"):
            reply = c.search_collection("hop", queries, top_k=2)
            assert reply.results[0].hits[0].id == "a"
            timing = reply.timing
            assert 0 < timing.transport_time_us <= timing.total_time_us
            assert 0 < timing.inference_time_us <= timing.total_time_us
        with pytest.raises(grpc.RpcError) as err:
            c.search_collection("hop", [vector[:-1]], top_k=2)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{info.dimension - 1} values; the collection's dimension is {info.dimension}" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            c.search_collection("hop", [vector, vector[:-1]], top_k=2)
        assert err.value.details() == f"query 1 has {info.dimension - 1} values; query 0's dimension is {info.dimension}"
        c.drop_collection("hop")


def test_a_deadline_that_expires_in_the_engine_queue_gives_deadline_exceeded_and_no_compute(two_frontends):
    with SemserveClient(two_frontends.address) as c:
        before = next(m.stats.items for m in c.info().models if m.name == "tiny")
        # two requests of 1024 long texts in batches of 8 keep the engine busy for well over a second
        busy = [
            c.encoder.Embed.future(
                encoder_pb2.EmbedRequest(model="tiny", texts=[f"busy {k} {i} " + "word " * 50 for i in range(1024)]),
                timeout=120,
            )
            for k in range(2)
        ]
        # the big requests reach the engine first (tokenizing them takes a while)
        wait_for(lambda: next(m.stats.active_requests for m in c.info().models if m.name == "tiny") >= 2, 30,
                 "the big requests to reach the engine")
        with pytest.raises(grpc.RpcError) as err:
            c.encoder.Embed(encoder_pb2.EmbedRequest(model="tiny", texts=["late " + "word " * 40]), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert [len(b.result().embeddings) for b in busy] == [1024, 1024]
        time.sleep(0.2)
        after = next(m.stats.items for m in c.info().models if m.name == "tiny")
    assert after - before == 2048  # the expired text was never computed


def test_a_killed_front_end_is_replaced_and_calls_go_on(tiny_folder):
    server = ProcessServer(tiny_config(tiny_folder), frontends=2)
    try:
        embed_on_fresh_channels(server.address, 8)
        victim = wait_for(lambda: next(iter(frontends(server.address)), None), 10, "a front end")
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: gone(victim.pid), 10, "the killed front end to be gone")
        # the other front end keeps the port and new connections go to it. A connection the kernel
        # hands to a socket as it closes (the killed one, or the restarted process's bind) is
        # reset: clients retry UNAVAILABLE, and here at most a couple of calls needed it.
        retried = embed_on_fresh_channels(server.address, 12, retries=2)
        replaced = wait_for(
            lambda: next((f for f in frontends(server.address) if f.index == victim.index and f.pid != victim.pid), None),
            15, "the front end's slot to get a new process",
        )
        assert replaced.pid != victim.pid
        retried += embed_on_fresh_channels(server.address, 12, retries=2)
        assert retried <= 3
        assert server.proc.poll() is None
        assert any("starting it again" in line for line in server.lines)
    finally:
        server.stop()


def assert_killing_ends_the_server(server: ProcessServer, pid: int, role: str) -> None:
    """SIGKILL one engine process: the server exits non-zero within 10 s and says which died."""
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    status = server.proc.wait(10)
    assert time.monotonic() - killed < 10
    assert status != 0
    time.sleep(0.5)
    assert any(f"{role} process was killed by signal SIGKILL" in line for line in server.lines)


def test_a_killed_engine_ends_the_server_with_a_non_zero_status_within_10_s(tiny_folder):
    server = ProcessServer(tiny_config(tiny_folder), frontends=2)
    try:
        engine = [pid for pid, cmd in children(server.proc.pid).items() if "engine_main" in cmd]
        assert len(engine) == 1
        assert_killing_ends_the_server(server, engine[0], "engine")
    finally:
        server.stop()


def test_sigterm_drains_every_process_and_exits_zero(tiny_folder):
    server = ProcessServer(tiny_config(tiny_folder, max_batch_size=8), frontends=2)
    pids = list(children(server.proc.pid))
    with SemserveClient(server.address) as c:
        in_flight = c.encoder.Embed.future(
            encoder_pb2.EmbedRequest(texts=[f"draining {i} " + "word " * 20 for i in range(512)]), timeout=60
        )
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        assert len(in_flight.result().embeddings) == 512  # the call in flight finishes
    assert server.proc.wait(5 + 15) == 0
    assert all(gone(pid) for pid in pids)
    with pytest.raises(grpc.RpcError) as err:
        embed_on_fresh_channels(server.address, 1)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
