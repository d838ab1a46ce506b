"""Every bad input gets a precise status and a message a user can act on; the server stays up."""

from __future__ import annotations

import grpc
import pytest

from semserve_client.v1 import encoder_pb2


def call(client, **fields):
    return client.encoder.Embed(encoder_pb2.EmbedRequest(**fields), timeout=30)


def expect(code: grpc.StatusCode, fn, *args, **kwargs) -> str:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    assert err.value.code() == code, err.value.details()
    return err.value.details()


@pytest.fixture(autouse=True)
def server_still_up(client):
    yield
    assert client.embed(["still up"]).vectors.shape == (1, 384)


def test_empty_text_list(client):
    details = expect(grpc.StatusCode.INVALID_ARGUMENT, call, client, texts=[])
    assert "at least one" in details


def test_text_list_over_the_limit(client):
    limit = client.info().limits.max_texts_per_request
    details = expect(grpc.StatusCode.INVALID_ARGUMENT, call, client, texts=["x"] * (limit + 1))
    assert str(limit) in details and str(limit + 1) in details


def test_truncate_false_with_an_overlong_text_names_its_index(client):
    details = expect(
        grpc.StatusCode.INVALID_ARGUMENT, call, client, texts=["short", "word " * 400], truncate=False
    )
    assert "text 1 has 402 tokens" in details and "256" in details


def test_truncate_false_with_texts_that_fit_works(client):
    response = call(client, texts=["short enough"], truncate=False)
    assert response.dimension == 384


def test_unknown_model(client):
    details = expect(grpc.StatusCode.NOT_FOUND, call, client, texts=["x"], model="no-such-model")
    assert "no-such-model" in details and "all-MiniLM-L6-v2" in details


def test_unknown_output_format(client):
    details = expect(grpc.StatusCode.INVALID_ARGUMENT, call, client, texts=["x"], format=42)
    assert "42" in details and "EMBEDDING_FORMAT_FLOAT16_BYTES" in details


def test_rerank_without_a_cross_encoder_names_the_flag(client):
    from semserve_client.v1 import reranker_pb2

    with pytest.raises(grpc.RpcError) as err:
        client.reranker.Rerank(reranker_pb2.RerankRequest(query="q", documents=["d"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--reranker" in err.value.details()


def test_message_over_the_size_limit(small_queue_server):
    from semserve_client import SemserveClient

    with SemserveClient(small_queue_server.address) as c:
        details = expect(grpc.StatusCode.RESOURCE_EXHAUSTED, call, c, texts=["x" * (2 << 20)])
        assert "larger than max" in details or "message" in details.lower()
        assert c.embed(["fine"]).vectors.shape == (1, 384)
