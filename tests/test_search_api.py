"""SearchService over a real gRPC channel: collections, upserts, exact search against a NumPy
brute force over the server's own embeddings, the rerank stage, and every bad input's status."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from conftest import server_config, start_server
from semserve.config import ModelSpec, SearchConfig
from semserve_client import AsyncSemserveClient, SemserveClient
from semserve_client.v1 import search_pb2

TOPICS = ["cats", "dogs", "stocks", "rain", "football", "cooking", "planets", "music"]
TEXTS = [f"{t} story number {i} about {t} and more {t}" for i in range(5) for t in TOPICS]
IDS = [f"doc-{i}" for i in range(len(TEXTS))]
LIMITS = dict(max_top_k=50, max_queries_per_search=4, max_documents_per_upsert=64, max_documents_per_rerank=40)


@pytest.fixture(scope="module")
def search_server(tmp_path_factory):
    from model_factory import make_tiny_cross_encoder, make_tiny_st_encoder

    encoder = make_tiny_st_encoder(tmp_path_factory.mktemp("enc"))
    cross = make_tiny_cross_encoder(tmp_path_factory.mktemp("ce"), num_labels=1, seed=3)
    handle = start_server(
        server_config(
            encoders=[ModelSpec("tiny", encoder, "encoder")],
            rerankers=[ModelSpec("ce", cross, "cross_encoder")],
            search=SearchConfig(devices="cpu", shards_per_device=3, chunk_rows=5, max_score_elements=0,
                                initial_capacity=4),
            **LIMITS,
        )
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def sc(search_server):
    with SemserveClient(search_server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def corpus(sc):
    """A cosine collection of TEXTS (encoded by the server) with topic metadata."""
    info = sc.create_collection("corpus")
    assert info.model == "tiny" and info.dimension == 256 and info.metric == search_pb2.METRIC_COSINE
    metadata = [{"topic": TOPICS[i % len(TOPICS)], "n": str(i)} for i in range(len(TEXTS))]
    assert sc.upsert("corpus", IDS, TEXTS, metadata=metadata).upserted == len(IDS)
    vectors = sc.embed(TEXTS, model="tiny").vectors  # normalised, as the collection stores them
    return vectors


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_collection_lifecycle(sc):
    info = sc.create_collection("vecs", dimension=0, metric="dot")
    assert info.dimension == 256 and info.metric == search_pb2.METRIC_DOT
    assert info.shards == 3 and list(info.devices) == ["cpu"] * 3 and info.dtype == "float32"
    assert info.durable is False  # no data dir: memory only
    assert "vecs" in [c.name for c in sc.list_collections()]
    assert code_of(lambda: sc.create_collection("vecs"))[0] == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: sc.create_collection("bad/name"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, message = code_of(lambda: sc.create_collection("x", model="tiny", dimension=7))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "256" in message
    assert code_of(lambda: sc.create_collection("x", model="nope"))[0] == grpc.StatusCode.NOT_FOUND
    sc.drop_collection("vecs")
    assert code_of(lambda: sc.get_collection("vecs"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: sc.drop_collection("vecs"))[0] == grpc.StatusCode.NOT_FOUND


def test_text_search_is_exact_over_the_servers_embeddings(sc, corpus):
    queries = ["a story about cats", "rain and weather", "planets in space"]
    response = sc.search_collection("corpus", queries, top_k=7, include_text=True, include_metadata=True)
    query_vectors = sc.embed(queries, model="tiny").vectors.astype(np.float64)
    reference = query_vectors @ corpus.astype(np.float64).T
    assert len(response.results) == 3
    for q, result in enumerate(response.results):
        got = [(h.id, h.score) for h in result.hits]
        assert len(got) == 7
        want_scores = np.sort(reference[q])[::-1][:7]
        np.testing.assert_allclose([s for _, s in got], want_scores, atol=1e-4)
        for hit in result.hits:
            i = IDS.index(hit.id)
            assert abs(reference[q, i] - hit.score) <= 1e-4
            assert hit.text == TEXTS[i] and hit.metadata["n"] == str(i)
            assert hit.embedding_score == hit.score


def test_vector_queries_filter_and_no_text_by_default(sc, corpus):
    response = sc.search_collection("corpus", corpus[3], top_k=5)
    assert response.results[0].hits[0].id == IDS[3]
    assert abs(response.results[0].hits[0].score - 1.0) < 1e-4
    assert response.results[0].hits[0].text == "" and not response.results[0].hits[0].metadata
    filtered = sc.search_collection("corpus", [corpus[0], "music"], top_k=50, filter={"topic": "dogs"})
    for result in filtered.results:
        assert len(result.hits) == 5
        assert {h.id for h in result.hits} == {IDS[i] for i in range(len(IDS)) if TOPICS[i % 8] == "dogs"}


def test_two_stage_search_returns_the_cross_encoders_order_over_the_candidates(sc, corpus):
    query = "stocks story"
    first = sc.search_collection("corpus", query, top_k=12, include_text=True).results[0].hits
    second = sc.search_collection("corpus", query, top_k=12, rerank=True, include_text=True).results[0].hits
    assert {h.id for h in second} == {h.id for h in first} and len(second) == 12
    reranked = sc.rerank(query, [h.text for h in first], model="ce")
    want = [first[r.index].id for r in reranked.results]
    assert [h.id for h in second] == want
    np.testing.assert_allclose([h.score for h in second], [r.score for r in reranked.results], atol=1e-5)
    first_scores = {h.id: h.score for h in first}
    assert all(abs(h.embedding_score - first_scores[h.id]) < 1e-6 for h in second)
    top3 = sc.search_collection("corpus", query, top_k=12, rerank=True, top_n=3, rerank_model="ce")
    assert [h.id for h in top3.results[0].hits] == want[:3]


def test_upsert_replace_delete_get_and_stream(sc):
    info = sc.create_collection("rw", dimension=4, metric="dot")
    assert info.model == "" and info.dimension == 4  # not the encoder's dimension: vectors only
    v = np.eye(4, dtype=np.float32)
    sc.upsert("rw", ["a", "b"], ["alpha", "beta"], embeddings=v[:2], metadata=[{"k": "1"}, {}])
    sc.upsert("rw", ["a"], ["alpha 2"], embeddings=[[0, 0, 2, 0]])  # replaces a
    got = sc.get_documents("rw", ["a", "b", "zz"], include_embeddings=True)
    assert [d.id for d in got.documents] == ["a", "b"] and list(got.missing_ids) == ["zz"]
    assert got.documents[0].text == "alpha 2" and list(got.documents[0].embedding) == [0, 0, 2, 0]
    assert dict(got.documents[0].metadata) == {}  # replaced whole, metadata included
    assert sc.get_collection("rw").count == 2
    code, message = code_of(lambda: sc.upsert("rw", ["t"], ["text only"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "has no model" in message
    assert sc.delete("rw", ["a", "zz"]) == 1
    assert sc.delete("rw", ["a"]) == 0
    hits = sc.search_collection("rw", [0, 0, 1, 0], top_k=5).results[0].hits
    assert [h.id for h in hits] == ["b"]
    messages = [
        search_pb2.UpsertRequest(collection="rw", documents=[
            search_pb2.Document(id=f"s{m}-{i}", embedding=[m, i, 1, 0]) for i in range(10)
        ]) for m in range(6)
    ]
    assert sc.upsert_stream(messages).upserted == 60
    assert sc.get_collection("rw").count == 61
    bad = messages[:2] + [search_pb2.UpsertRequest(collection="rw", documents=[search_pb2.Document(id="x", embedding=[1])])]
    code, message = code_of(lambda: sc.upsert_stream(bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("message 2:")


def test_bad_input_statuses(sc, corpus):
    ia, nf = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    s = sc.search_collection
    assert code_of(lambda: s("missing", "q", top_k=3))[0] == nf
    assert code_of(lambda: sc.upsert("missing", ["a"], ["t"]))[0] == nf
    assert code_of(lambda: sc.get_documents("missing", ["a"]))[0] == nf
    assert code_of(lambda: sc.delete("missing", ["a"]))[0] == nf
    code, message = code_of(lambda: s("corpus", [1.0, 2.0], top_k=3))
    assert code == ia and "dimension is 256" in message
    code, message = code_of(lambda: sc.upsert("corpus", ["z"], embeddings=[[1.0] * 3]))
    assert code == ia and "dimension is 256" in message
    for top_k in (0, 51):
        code, message = code_of(lambda: s("corpus", "q", top_k=top_k))
        assert code == ia and "top_k must be in 1..50" in message
    assert code_of(lambda: s("corpus", "  ", top_k=3)) == (ia, "query 0 is an empty text")
    empty_query = search_pb2.SearchRequest(collection="corpus", top_k=3, queries=[search_pb2.SearchQuery()])
    assert code_of(lambda: sc.search.Search(empty_query))[1] == "query 0 is empty; set text or vector"
    assert code_of(lambda: sc.search.Search(search_pb2.SearchRequest(collection="corpus", top_k=3)))[0] == ia
    assert code_of(lambda: s("corpus", ["q"] * 5, top_k=3))[0] == ia
    code, message = code_of(lambda: sc.upsert("corpus", ["d", "e", "d"], ["x", "y", "z"]))
    assert code == ia and "'d' appears more than once" in message
    assert code_of(lambda: sc.upsert("corpus", [str(i) for i in range(65)], ["t"] * 65))[0] == ia
    assert code_of(lambda: sc.upsert("corpus", [""], ["t"]))[0] == ia
    assert code_of(lambda: sc.upsert("corpus", ["n"], [""]))[0] == ia
    assert code_of(lambda: s("corpus", [corpus[0]], top_k=3, rerank=True))[0] == ia
    assert code_of(lambda: s("corpus", "q", top_k=3, rerank_model="nope"))[0] == nf
    assert code_of(lambda: s("corpus", "q", top_k=45, rerank=True))[0] == ia
    assert code_of(lambda: s("corpus", [float("nan")] * 256, top_k=3))[0] == ia
    assert sc.get_collection("corpus").count == len(IDS)  # nothing of the refused upserts landed


def test_async_client(search_server, corpus):
    async def main():
        async with AsyncSemserveClient(search_server.address) as c:
            await c.create_collection("async", dimension=2, metric="dot")
            await c.upsert("async", ["p", "q"], embeddings=[[1, 0], [0, 1]])
            hits = await asyncio.gather(*(c.search_collection("async", [1, 0.1 * i], top_k=1) for i in range(4)))
            await c.drop_collection("async")
            return [r.results[0].hits[0].id for r in hits]

    assert asyncio.run(main()) == ["p"] * 4


def test_a_dimension_over_the_limit_is_refused_before_any_allocation(sc):
    limit = sc.info().limits.max_dimension
    assert limit == 8192
    for dimension in (limit + 1, 500_000, 2**32 - 1):
        code, message = code_of(lambda: sc.create_collection(f"huge{dimension}", dimension=dimension))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_dimension" in message
    assert not [c for c in sc.list_collections() if c.name.startswith("huge")]
