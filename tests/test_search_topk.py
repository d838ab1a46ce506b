"""Exact top-k: chunked, sharded scoring against a float64 NumPy brute force, and the invariants
a collection must keep (shard count, tombstones, compaction, filters do not change results)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tempfile
from pathlib import Path

from semserve.search.collection import Collection, Layout
from semserve.search.database import FILE_NAME, CollectionDatabase, CollectionSpec
from semserve.search.topk import exact_topk, shard_topk, step_rows

# float32 scores of float32 vectors vs float64: a few ulps of the accumulated dot product.
SCORE_ATOL = 1e-4


def brute_force(corpus: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None):
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return scores, order


def assert_same_topk(got: list[list[tuple[int, float]]], scores: np.ndarray, order: np.ndarray, k: int):
    """Ids equal up to ties: each returned score matches the reference score of its row, and the
    returned score list equals the reference's k best scores."""
    for q, hits in enumerate(got):
        want = [scores[q, r] for r in order[q] if np.isfinite(scores[q, r])][:k]
        assert len(hits) == len(want)
        got_scores = np.array([s for _, s in hits])
        np.testing.assert_allclose(got_scores, want, atol=SCORE_ATOL, rtol=0)
        for row, score in hits:
            assert abs(scores[q, row] - score) <= SCORE_ATOL
        # Rows whose reference score is clearly inside the top-k (not tied at the boundary) must be there.
        if want:
            boundary = want[-1]
            must = {int(r) for r in order[q] if scores[q, r] > boundary + 2 * SCORE_ATOL}
            assert must <= {row for row, _ in hits}
        assert len({row for row, _ in hits}) == len(hits)


def split_rows(n: int, shards: int) -> list[np.ndarray]:
    return np.array_split(np.arange(n), shards)


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
@pytest.mark.parametrize("seed", [0, 1])
def test_sharded_chunked_topk_equals_brute_force(shards, chunk_rows, seed):
    rng = np.random.default_rng(seed * 100 + shards * 10 + chunk_rows % 7)
    n, dim, nq, k = int(rng.integers(1, 400)), int(rng.integers(1, 48)), int(rng.integers(1, 6)), int(rng.integers(1, 40))
    corpus = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    parts = split_rows(n, shards)
    # Shards are preallocated larger than their used rows; the rows past `used` hold garbage.
    tensors = []
    for rows in parts:
        t = torch.full((len(rows) + 5, dim), 1e6, dtype=torch.float32)
        t[: len(rows)] = torch.from_numpy(corpus[rows])
        tensors.append((t, len(rows), None))
    hits = exact_topk(tensors, torch.from_numpy(queries), k, chunk_rows)
    global_hits = [[(int(parts[s][r]), score) for s, r, score in q] for q in hits]
    scores, order = brute_force(corpus, queries, k)
    assert_same_topk(global_hits, scores, order, k)


def test_masked_rows_are_never_returned_and_short_lists_are_allowed():
    rng = np.random.default_rng(7)
    corpus = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    allowed = rng.random(50) < 0.1
    mask = torch.from_numpy(allowed)
    hits = exact_topk([(torch.from_numpy(corpus), 50, mask)], torch.from_numpy(queries), 20, chunk_rows=9)
    scores, order = brute_force(corpus, queries, 20, allowed)
    assert all(len(q) == allowed.sum() for q in hits)
    assert_same_topk([[(r, s) for _, r, s in q] for q in hits], scores, order, 20)


def test_ties_keep_the_top_score_set():
    corpus = np.ones((30, 4), dtype=np.float32)
    hits = exact_topk([(torch.from_numpy(corpus), 30, None)], torch.ones((1, 4)), 5, chunk_rows=4)
    assert [s for _, _, s in hits[0]] == [4.0] * 5
    assert len({r for _, r, _ in hits[0]}) == 5


def test_step_grows_for_few_queries_but_stays_bounded():
    assert step_rows(65536, 1, 1 << 24) == 1 << 24
    assert step_rows(65536, 1024, 1 << 24) == 65536
    assert step_rows(7, 3, 0) == 7


def test_shard_topk_score_buffer_is_bounded_by_the_chunk():
    """The scan never materialises queries x corpus: every matmul output is queries x chunk."""
    seen = []
    real = torch.matmul

    def spy(a, b):
        out = real(a, b)
        seen.append(tuple(out.shape))
        return out

    corpus = torch.randn(1000, 16)
    torch.matmul = spy
    try:
        shard_topk(corpus, 1000, torch.randn(4, 16), 10, chunk_rows=128)
    finally:
        torch.matmul = real
    assert seen and max(rows for _, rows in seen) <= 128


def make_collection(shards: int, metric: str = "dot", capacity: int = 4) -> Collection:
    layout = Layout(["cpu"] * shards, [torch.float32] * shards, initial_capacity=capacity, chunk_rows=16,
                    max_score_elements=0)
    directory = Path(tempfile.mkdtemp(prefix="semserve-topk-")) / "t"
    directory.mkdir()
    CollectionDatabase.create(directory / FILE_NAME, CollectionSpec("t", "", 12, metric), durable=False)
    return Collection.open(directory, layout, durable=False)


def load(collection: Collection, ids, vectors, metadata=None):
    metadata = metadata or [{} for _ in ids]
    collection.upsert(list(ids), list(ids), metadata, vectors)


@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_results_do_not_depend_on_shard_count_deletes_or_compaction(metric):
    rng = np.random.default_rng(3)
    n = 300
    ids = [f"doc-{i}" for i in range(n)]
    vectors = rng.standard_normal((n, 12)).astype(np.float32)
    queries = rng.standard_normal((4, 12)).astype(np.float32)
    deleted = set(ids[::3])
    replaced = ids[1::7]
    new_vectors = rng.standard_normal((len(replaced), 12)).astype(np.float32)
    outcomes = []
    for shards in (1, 2, 4):
        c = make_collection(shards, metric)
        for start in range(0, n, 37):  # several batches: capacity doubles along the way
            load(c, ids[start : start + 37], vectors[start : start + 37])
        load(c, replaced, new_vectors)
        c.delete(sorted(deleted))
        before = c.search(queries, 25, {})
        reclaimed = c.compact(0.0)
        assert reclaimed == len(deleted)
        after = c.search(queries, 25, {})
        assert [[i for i, _ in q] for q in before] == [[i for i, _ in q] for q in after]
        outcomes.append(before)
    reference = vectors.copy()
    for i, doc_id in enumerate(replaced):
        reference[ids.index(doc_id)] = new_vectors[i]
    if metric == "cosine":
        reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    allowed = np.array([i not in deleted for i in ids])
    scores, order = brute_force(reference, queries, 25, allowed)
    index = {doc_id: i for i, doc_id in enumerate(ids)}
    for outcome in outcomes:
        assert_same_topk([[(index[d], s) for d, s in q] for q in outcome], scores, order, 25)
        assert all(d not in deleted for q in outcome for d, _ in q)
    assert [[d for d, _ in q] for q in outcomes[0]] == [[d for d, _ in q] for q in outcomes[2]]


def test_filter_and_capacity_doubling():
    c = make_collection(3, capacity=2)
    rng = np.random.default_rng(5)
    ids = [str(i) for i in range(100)]
    vectors = rng.standard_normal((100, 12)).astype(np.float32)
    load(c, ids, vectors, [{"parity": str(i % 2), "tens": str(i // 10)} for i in range(100)])
    assert all(s.capacity >= s.used for s in c.matrix.shards)
    assert sum(s.used for s in c.matrix.shards) == 100
    hits = c.search(vectors[:2], 10, {"parity": "1", "tens": "3"})
    for q in hits:
        assert {int(d) for d, _ in q} <= {31, 33, 35, 37, 39} and len(q) == 5
    assert c.search(vectors[:1], 5, {"parity": "nope"}) == [[]]
    assert c.search(vectors[:1], 1, {})[0][0][0] == "0"


@pytest.mark.parametrize("n", [256, 1000, 64 * 40, 64 * 40 + 13, 5000])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_two_level_chunk_selection_is_exact(n, k):
    from semserve.search.topk import chunk_topk

    rng = np.random.default_rng(n * 10 + k)
    scores = rng.standard_normal((3, n)).astype(np.float32)
    scores[1, rng.random(n) < 0.5] = -np.inf  # masked rows
    scores[2, :] = np.round(scores[2], 1)  # many ties
    values, columns = chunk_topk(torch.from_numpy(scores), k)
    for q in range(3):
        want = np.sort(scores[q])[::-1][:k]
        np.testing.assert_array_equal(np.sort(values[q].numpy())[::-1], want)
        assert np.array_equal(scores[q, columns[q].numpy()], values[q].numpy())
        assert len(set(columns[q].tolist())) == k
