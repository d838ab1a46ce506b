"""Batching seen from outside: coalescing, back-pressure, deadlines and cancellation, each
read from the server's own counters (Info stats)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from semserve_client import SemserveClient
from semserve_client.v1 import encoder_pb2

LONG = "tokens keep coming in this rather long sentence " * 40  # truncated to 256 tokens


def stats(c: SemserveClient):
    return c.info().models[0].stats


def wait_until_in_the_engine(c: SemserveClient, requests: int) -> None:
    """Until that many requests are queued or computing (tokenizing a long one takes a while)."""
    deadline = time.monotonic() + 30
    while stats(c).active_requests < requests and time.monotonic() < deadline:
        time.sleep(0.005)


def test_64_concurrent_single_text_calls_share_few_forward_passes(client, bundled_st):
    texts = [f"concurrent request number {i} about topic {i % 7}" for i in range(64)]
    before = stats(client)
    calls = [client.encoder.Embed.future(encoder_pb2.EmbedRequest(texts=[t]), timeout=60) for t in texts]
    responses = [c.result() for c in calls]
    after = stats(client)
    batches = after.batches - before.batches
    assert after.items - before.items == 64
    assert batches <= 16, f"64 single-text calls took {batches} forward passes"
    from semserve_client import decode_embeddings

    got = np.concatenate([decode_embeddings(r) for r in responses])
    want = bundled_st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    assert np.abs(got - want).max() <= 1e-5


def test_embedding_does_not_depend_on_batch_companions(client):
    target = "the text under test"
    alone = client.embed([target]).vectors[0]
    companions = ["x", LONG, "a medium length companion sentence for padding", target, "y" * 50]
    mixed = client.embed(companions).vectors[3]
    assert np.abs(alone - mixed).max() <= 1e-5


def test_full_queue_answers_resource_exhausted_at_once(small_queue_server):
    with SemserveClient(small_queue_server.address, retry=None) as c:  # each call's own answer, not retried
        before = stats(c)
        request = encoder_pb2.EmbedRequest(texts=[LONG] * 16)
        started = time.monotonic()
        calls = [c.encoder.Embed.future(request, timeout=120) for _ in range(6)]
        outcomes, refused_latency = [], []
        for call in calls:
            try:
                call.result()
                outcomes.append("ok")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                assert "queue is full" in err.details()
                outcomes.append("refused")
        elapsed = time.monotonic() - started
        assert "ok" in outcomes and "refused" in outcomes, outcomes
        after = stats(c)
        assert after.rejected_requests - before.rejected_requests == outcomes.count("refused")
        assert after.items - before.items == 16 * outcomes.count("ok")
        assert after.queued_items == 0
        # the server is fine afterwards
        assert c.embed(["still serving"]).vectors.shape == (1, 384)
    assert elapsed < 120


def test_expired_deadline_is_dropped_before_compute(small_queue_server):
    with SemserveClient(small_queue_server.address) as c:
        before = stats(c)
        big = c.encoder.Embed.future(encoder_pb2.EmbedRequest(texts=[LONG] * 16), timeout=120)
        wait_until_in_the_engine(c, 1)
        with pytest.raises(grpc.RpcError) as err:
            c.encoder.Embed(encoder_pb2.EmbedRequest(texts=["too late"]), timeout=0.05)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        big.result()
        time.sleep(0.2)
        after = stats(c)
        assert after.items - before.items == 16  # the expired text never reached the model


def test_cancelled_call_is_dropped_before_compute(small_queue_server):
    with SemserveClient(small_queue_server.address) as c:
        before = stats(c)
        big = c.encoder.Embed.future(encoder_pb2.EmbedRequest(texts=[LONG] * 16), timeout=120)
        wait_until_in_the_engine(c, 1)
        doomed = c.encoder.Embed.future(encoder_pb2.EmbedRequest(texts=["never mind"] * 4), timeout=120)
        wait_until_in_the_engine(c, 2)
        assert doomed.cancel()
        big.result()
        time.sleep(0.2)
        after = stats(c)
        assert after.items - before.items == 16


def test_concurrent_load_from_many_threads_stays_correct(client):
    """A bounded burst: 8 threads x 10 calls of mixed sizes; every answer has the right shape."""

    def worker(n: int) -> int:
        done = 0
        for i in range(10):
            size = 1 + (n + i) % 5
            result = client.embed([f"thread {n} call {i} item {k}" for k in range(size)])
            assert result.vectors.shape == (size, 384)
            done += size
        return done

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == sum(1 + (n + i) % 5 for n in range(8) for i in range(10))
