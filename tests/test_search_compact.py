"""int8 and binary collections: a quarter and a thirty-second of the shard bytes, candidates from
the compact scan rescored exactly from the float32 vectors in the file; recall@10 against float
search, durability, the API."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import server_config, start_server
from semserve.config import ModelSpec, SearchConfig
from semserve.search.store import CollectionStore
from semserve_client import SemserveClient

DIMENSION = 384


def clustered_unit_vectors(count: int, seed: int) -> np.ndarray:
    """Unit vectors around a few hundred centres: neighbours are close, as in text embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, DIMENSION))
    vectors = centres[rng.integers(0, 300, count)] + 0.6 * rng.standard_normal((count, DIMENSION))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def open_store(data_dir: Path) -> CollectionStore:
    store = CollectionStore(SearchConfig(data_dir=data_dir, devices="cpu", shards_per_device=2), ["cpu"])
    store.open()
    return store


@pytest.mark.parametrize("storage,multiplier,min_recall,shrink", [("int8", 4, 0.97, 4), ("binary", 40, 0.9, 32)])
def test_recall_memory_and_exact_scores_against_float_search(tmp_path, storage, multiplier, min_recall, shrink):
    corpus = clustered_unit_vectors(4000, seed=1)
    queries = clustered_unit_vectors(60, seed=2)
    ids = [f"d{i}" for i in range(len(corpus))]
    store = open_store(tmp_path / "data")
    exact = store.create("float", "", DIMENSION, "cosine")
    compact = store.create(storage, "", DIMENSION, "cosine", storage=storage, rescore_multiplier=multiplier)
    for c in (exact, compact):
        for start in range(0, len(ids), 500):
            c.upsert(ids[start : start + 500], [""] * 500, [{}] * 500, corpus[start : start + 500])
    want = exact.search(queries, 10, {})
    got = compact.search(queries, 10, {})
    recall = np.mean([len({i for i, _ in g} & {i for i, _ in w}) / 10 for g, w in zip(got, want)])
    assert recall >= min_recall, recall
    for hits, query in zip(got, queries):  # rescored: the scores are the exact cosines
        for doc_id, score in hits:
            assert abs(score - float(corpus[int(doc_id[1:])] @ query)) < 1e-5
    float_bytes, compact_bytes = exact.describe()["bytes"], compact.describe()["bytes"]
    assert compact_bytes * shrink == float_bytes
    store.close()

    reopened = open_store(tmp_path / "data")  # durable as float collections: rebuilt from the file
    assert reopened.get(storage).search(queries, 10, {}) == got
    reopened.close()


def test_int8_collections_over_grpc(tmp_path):
    from model_factory import make_tiny_st_encoder

    encoder = make_tiny_st_encoder(tmp_path / "enc")
    server = start_server(server_config(encoders=[ModelSpec("tiny", encoder, "encoder")],
                                        search=SearchConfig(devices="cpu", data_dir=tmp_path / "data")))
    try:
        with SemserveClient(server.address, timeout=60) as c:
            info = c.create_collection("small", storage="int8", rescore_multiplier=8)
            assert info.dtype == "int8" and info.rescore_multiplier == 8 and info.storage == 1
            texts = [f"document number {i} about topic {i % 7}" for i in range(50)]
            c.upsert("small", [f"t{i}" for i in range(50)], texts)
            hits = c.search_collection("small", ["document number 3 about topic 3"], top_k=3).results[0].hits
            assert hits[0].id == "t3"
            with pytest.raises(grpc.RpcError) as err:
                c.create_collection("dotted", dimension=16, metric="dot", storage="int8")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cosine" in err.value.details()
    finally:
        server.stop()
