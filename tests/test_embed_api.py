"""Embed, Tokenize, Similarity and Info over a real gRPC channel, checked against
sentence-transformers on the same folders."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import BUNDLED_NAME, server_config, start_server
from semserve.config import ModelSpec
from semserve_client import SemserveClient
from semserve_client.v1 import common_pb2, encoder_pb2

TEXTS = [
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "普拉多是一款越野车",
    " ",
    "A much longer text that keeps going " * 60,  # over 256 tokens: truncated
    "Semantic search finds documents by meaning rather than by keywords.",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bundled_model_parity_with_sentence_transformers(client, bundled_st):
    got = client.embed(TEXTS).vectors
    want = bundled_st.encode(TEXTS, convert_to_numpy=True)
    assert got.shape == (len(TEXTS), 384)
    assert cosines(got, want).min() >= 0.99999


def test_tiny_dense_model_parity_with_sentence_transformers(tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    from model_factory import make_tiny_st_encoder

    folder = make_tiny_st_encoder(tmp_path_factory.mktemp("tiny-st"))
    handle = start_server(server_config(encoders=[ModelSpec("tiny", folder, "encoder")]))
    try:
        with SemserveClient(handle.address) as c:
            got = c.embed(TEXTS, normalize=False)
        want = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
        assert got.response.dimension == 256
        assert cosines(got.vectors, want).min() >= 0.99999
        assert np.abs(got.vectors - want).max() <= 1e-4
    finally:
        handle.stop()


@pytest.mark.parametrize("fmt, tol", [("float_list", 1e-6), ("float32", 0.0), ("float16", 2e-3)])
def test_wire_formats_agree(client, fmt, tol):
    reference = client.embed(TEXTS[:3], format="float32").vectors
    got = client.embed(TEXTS[:3], format=fmt)
    assert got.response.format == {
        "float_list": common_pb2.EMBEDDING_FORMAT_FLOAT_LIST,
        "float32": common_pb2.EMBEDDING_FORMAT_FLOAT32_BYTES,
        "float16": common_pb2.EMBEDDING_FORMAT_FLOAT16_BYTES,
    }[fmt]
    assert np.abs(got.vectors - reference).max() <= tol


def test_normalize_is_on_by_default_and_can_be_turned_off(tmp_path_factory):
    from model_factory import make_tiny_st_encoder

    folder = make_tiny_st_encoder(tmp_path_factory.mktemp("tiny-norm"))
    handle = start_server(server_config(encoders=[ModelSpec("tiny", folder, "encoder")]))
    try:
        with SemserveClient(handle.address) as c:
            normed = c.embed(["some text"]).vectors
            raw = c.embed(["some text"], normalize=False).vectors
        assert abs(np.linalg.norm(normed) - 1) < 1e-5
        assert abs(np.linalg.norm(raw) - 1) > 1e-3
        assert cosines(normed, raw)[0] > 0.99999
    finally:
        handle.stop()


def test_response_reports_tokens_truncation_and_timing(client):
    response = client.embed(TEXTS).response
    assert list(response.truncated_indexes) == [4]
    assert response.token_counts[0] == 3  # [CLS] hello [SEP]
    assert response.token_counts[4] == 256
    t = response.timing
    assert t.compute_tokens == sum(response.token_counts)
    assert t.padded_tokens >= t.compute_tokens
    assert t.batches >= 1
    assert t.total_time_us >= t.inference_time_us > 0
    assert t.tokenization_time_us > 0


def test_tokenize_shows_pieces_offsets_and_limits(client):
    response = client.tokenize(["Hello world", "word " * 300])
    first = response.texts[0]
    assert [t.piece for t in first.tokens] == ["[CLS]", "hello", "world", "[SEP]"]
    assert [(t.start, t.end) for t in first.tokens[1:3]] == [(0, 5), (6, 11)]
    assert first.tokens[0].special and not first.tokens[1].special
    assert response.max_tokens == 256
    long = response.texts[1]
    assert long.over_limit and long.full_token_count == 302 and len(long.tokens) == 256
    untruncated = client.tokenize(["word " * 300], truncate=False).texts[0]
    assert len(untruncated.tokens) == 302


def test_embed_matches_tokenize_counts(client):
    texts = ["one", "two words", "三个字"]
    counts = client.embed(texts).response.token_counts
    assert list(counts) == [len(t.tokens) for t in client.tokenize(texts).texts]


def test_similarity_ranks_the_paraphrase_first(client):
    scores = client.similarity("How old are you?", ["What is your age?", "The weather is sunny today."])
    assert scores[0] > scores[1]
    vectors = client.embed(["How old are you?", "What is your age?"]).vectors
    assert abs(scores[0] - float(vectors[0] @ vectors[1])) < 1e-5


def test_info_lists_models_and_limits(client):
    info = client.info()
    (model,) = info.models
    assert model.name == BUNDLED_NAME and model.is_default
    assert model.kind == common_pb2.MODEL_KIND_ENCODER
    assert model.dimension == 384 and model.max_tokens == 256 and model.pooling == "mean"
    assert list(model.devices) == ["cpu"] and model.dtype == "float32"
    limits = info.limits
    assert limits.max_texts_per_request > 0 and limits.max_queue_size >= limits.max_texts_per_request
    assert limits.max_receive_message_bytes > 0 and limits.max_batch_tokens > 0


def test_named_model_and_default_model_agree(client):
    a = client.embed(["same text"]).vectors
    b = client.embed(["same text"], model=BUNDLED_NAME).vectors
    assert np.array_equal(a, b)


def test_embed_stream_answers_every_message_by_id(client):
    def requests():
        for i in range(20):
            yield encoder_pb2.EmbedStreamRequest(
                id=f"req-{i}", request=encoder_pb2.EmbedRequest(texts=[f"text number {i}"] * (1 + i % 3))
            )
        yield encoder_pb2.EmbedStreamRequest(id="bad", request=encoder_pb2.EmbedRequest(texts=[]))
        yield encoder_pb2.EmbedStreamRequest(id="unknown", request=encoder_pb2.EmbedRequest(model="nope", texts=["x"]))

    answers = {r.id: r for r in client.encoder.EmbedStream(requests(), timeout=60)}
    assert set(answers) == {f"req-{i}" for i in range(20)} | {"bad", "unknown"}
    for i in range(20):
        response = answers[f"req-{i}"].response
        assert len(response.embeddings) == 1 + i % 3 and response.dimension == 384
    assert answers["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers["unknown"].error.code == grpc.StatusCode.NOT_FOUND.value[0]


def test_health_overall_and_per_service(client):
    assert client.health_status() == "SERVING"
    assert client.health_status("semserve.v1.EncoderService") == "SERVING"
    with pytest.raises(grpc.RpcError) as err:
        client.health_status("no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(client):
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"semserve.v1.EncoderService", "semserve.v1.InfoService", "grpc.health.v1.Health"} <= names


def test_search_service_is_served(client):
    """SearchService is implemented now (tests/test_search_api.py covers it); it must answer."""
    from semserve_client.v1 import search_pb2

    response = client.search.ListCollections(search_pb2.ListCollectionsRequest(), timeout=10)
    assert isinstance(response, search_pb2.ListCollectionsResponse)


def test_async_client(encoder_server):
    import asyncio

    from semserve_client import AsyncSemserveClient

    async def main():
        async with AsyncSemserveClient(encoder_server.address) as c:
            results = await asyncio.gather(*(c.embed([f"text {i}"]) for i in range(8)))
            info = await c.info()
        return results, info

    results, info = asyncio.run(main())
    assert all(r.vectors.shape == (1, 384) for r in results)
    assert info.models[0].dimension == 384

