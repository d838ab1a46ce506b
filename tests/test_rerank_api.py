"""Rerank over a real gRPC channel, checked against sentence-transformers' CrossEncoder."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from conftest import BUNDLED_NAME, server_config, start_server
from semserve.config import ModelSpec
from semserve.models.bundled import default_encoder_path
from semserve_client import SemserveClient
from semserve_client.v1 import reranker_pb2

QUERY = "which car is good off-road?"
DOCS = [
    "The Land Cruiser Prado is a capable off-road vehicle.",
    "Bananas are rich in potassium.",
    "SUV",
    "越野车在山路上表现很好",
    "A long review of a sedan that never leaves the city streets " * 30,  # needs truncation
    " ",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from model_factory import make_tiny_cross_encoder

    return {
        "ce1": make_tiny_cross_encoder(tmp_path_factory.mktemp("ce1"), num_labels=1, seed=1),
        "ce2": make_tiny_cross_encoder(tmp_path_factory.mktemp("ce2"), num_labels=2, seed=2),
    }


@pytest.fixture(scope="module")
def rerank_server(folders):
    handle = start_server(
        server_config(
            encoders=[ModelSpec(BUNDLED_NAME, default_encoder_path(), "encoder")],
            rerankers=[ModelSpec(name, path, "cross_encoder") for name, path in folders.items()],
            max_documents_per_rerank=64,
        )
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def rc(rerank_server):
    with SemserveClient(rerank_server.address) as c:
        yield c


def reference(folder, **predict_kwargs) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    return np.asarray(CrossEncoder(str(folder), device="cpu").predict([(QUERY, d) for d in DOCS], **predict_kwargs))


def by_index(response) -> np.ndarray:
    scores = np.zeros(len(response.results), dtype=np.float64)
    for r in response.results:
        scores[r.index] = r.score
    return scores


def test_single_label_parity_with_sigmoid(rc, folders):
    got = by_index(rc.rerank(QUERY, DOCS, model="ce1"))
    want = reference(folders["ce1"])
    assert np.abs(got - want).max() <= 1e-5
    assert (got > 0).all() and (got < 1).all()


def test_single_label_parity_raw_logits(rc, folders):
    import torch

    got = by_index(rc.rerank(QUERY, DOCS, model="ce1", raw_scores=True))
    want = reference(folders["ce1"], activation_fn=torch.nn.Identity())
    assert np.abs(got - want).max() <= 1e-5


def test_two_label_parity_is_the_probability_of_label_one(rc, folders):
    got = by_index(rc.rerank(QUERY, DOCS, model="ce2"))
    want = reference(folders["ce2"], apply_softmax=True)[:, 1]
    assert np.abs(got - want).max() <= 1e-5


def test_results_are_sorted_with_original_indexes_and_documents(rc):
    response = rc.rerank(QUERY, DOCS, model="ce1", return_documents=True)
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r.index for r in response.results) == list(range(len(DOCS)))
    assert all(r.document == DOCS[r.index] for r in response.results)
    assert response.timing.batches >= 1 and response.timing.compute_tokens > 0


def test_top_n(rc):
    full = rc.rerank(QUERY, DOCS, model="ce1")
    top2 = rc.rerank(QUERY, DOCS, model="ce1", top_n=2)
    assert [r.index for r in top2.results] == [r.index for r in full.results[:2]]
    assert len(rc.rerank(QUERY, DOCS, model="ce1", top_n=100).results) == len(DOCS)  # above the count: all


def test_default_cross_encoder_is_the_first(rc):
    assert rc.rerank(QUERY, DOCS).model == "ce1"


def test_score_does_not_depend_on_batch_companions(rc):
    alone = rc.rerank(QUERY, [DOCS[0]], model="ce1").results[0].score
    mixed = by_index(rc.rerank(QUERY, DOCS, model="ce1"))[0]
    assert abs(alone - mixed) <= 1e-5


def test_64_concurrent_rerank_calls_coalesce(rc):
    def stats():
        return next(m for m in rc.info().models if m.name == "ce1").stats

    before = stats()
    # A long call first keeps the worker busy while the 64 small ones arrive, so that they queue
    # up together however slowly this machine sends them.
    busy = rc.reranker.Rerank.future(reranker_pb2.RerankRequest(
        model="ce1", query=QUERY, documents=[" ".join(DOCS * 20)] * 64), timeout=60)
    calls = [
        rc.reranker.Rerank.future(reranker_pb2.RerankRequest(model="ce1", query=QUERY, documents=[DOCS[i % 4]]), timeout=60)
        for i in range(64)
    ]
    results = [c.result().results[0].score for c in calls]
    busy.result()
    after = stats()
    assert after.items - before.items == 64 + 64
    assert after.batches - before.batches <= 32  # 128 items; alone they would be 65 batches
    alone = {i: rc.rerank(QUERY, [DOCS[i]], model="ce1").results[0].score for i in range(4)}
    assert max(abs(results[i] - alone[i % 4]) for i in range(64)) <= 1e-5


def test_rerank_stream_answers_by_id(rc):
    def requests():
        for i in range(10):
            yield reranker_pb2.RerankStreamRequest(
                id=str(i), request=reranker_pb2.RerankRequest(model="ce1", query=QUERY, documents=DOCS[: 1 + i % 5])
            )
        yield reranker_pb2.RerankStreamRequest(id="bad", request=reranker_pb2.RerankRequest(query="", documents=["d"]))

    answers = {a.id: a for a in rc.reranker.RerankStream(requests(), timeout=60)}
    assert all(len(answers[str(i)].response.results) == 1 + i % 5 for i in range(10))
    assert answers["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_info_lists_both_kinds(rc):
    kinds = {m.name: (m.kind, m.is_default, m.dimension) for m in rc.info().models}
    from semserve_client.v1 import common_pb2

    assert kinds[BUNDLED_NAME] == (common_pb2.MODEL_KIND_ENCODER, True, 384)
    assert kinds["ce1"] == (common_pb2.MODEL_KIND_CROSS_ENCODER, True, 1)
    assert kinds["ce2"] == (common_pb2.MODEL_KIND_CROSS_ENCODER, False, 2)


def expect(code, fn, *args, **kwargs) -> str:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    assert err.value.code() == code, err.value.details()
    return err.value.details()


@pytest.mark.parametrize(
    "fields, code, words",
    [
        (dict(query=QUERY, documents=[]), grpc.StatusCode.INVALID_ARGUMENT, "no documents"),
        (dict(query=QUERY, documents=["d"] * 65), grpc.StatusCode.INVALID_ARGUMENT, "at most 64"),
        (dict(query="  ", documents=["d"]), grpc.StatusCode.INVALID_ARGUMENT, "query is empty"),
        (dict(query=QUERY, documents=["d"], top_n=0), grpc.StatusCode.INVALID_ARGUMENT, "top_n"),
        (dict(query=QUERY, documents=["d"], top_n=-3), grpc.StatusCode.INVALID_ARGUMENT, "top_n"),
        (dict(query=QUERY, documents=["d"], model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (dict(query=QUERY, documents=["d"], model=BUNDLED_NAME), grpc.StatusCode.INVALID_ARGUMENT, "cross-encoder"),
        (dict(query=QUERY, documents=["word " * 600], truncate=False), grpc.StatusCode.INVALID_ARGUMENT, "pair 0"),
    ],
)
def test_bad_input(rc, fields, code, words):
    details = expect(code, rc.reranker.Rerank, reranker_pb2.RerankRequest(**fields), timeout=30)
    assert words in details
    assert rc.rerank(QUERY, ["still up"]).results  # the server stays up


def test_rerank_without_cross_encoder_names_the_flag(client):
    details = expect(grpc.StatusCode.FAILED_PRECONDITION, client.rerank, QUERY, DOCS)
    assert "--reranker" in details


def test_client_cli_rerank(rerank_server):
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "semserve_client.cli", "--target", rerank_server.address, "rerank", QUERY, *DOCS[:3],
         "--top-n", "2"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    results = json.loads(out.stdout)["results"]
    assert len(results) == 2 and results[0]["score"] >= results[1]["score"]
    assert all(r["document"] == DOCS[r.get("index", 0)] for r in results)
