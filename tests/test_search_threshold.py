"""Top-k for large k through a sampled threshold (search/threshold_scan.py), on the CPU with the
torch reference of the scan: the selection equals a brute force, masked rows never come back,
and the check that sends a shard to the chunked path fires whenever the lists could not hold
the whole top k. The Triton kernel itself is checked on the GPU machine (tests below, skipped
here, and tests/perf/gpu_fused_topk.py)."""

from __future__ import annotations

import pytest
import torch

from semserve.search import threshold_scan
from semserve.search.threshold_scan import (
    capacity,
    complete,
    sample_rank,
    sample_stride,
    sample_thresholds,
    shard_fits,
    threshold_scan_reference,
    threshold_shard_topk,
)
from topk_checks import assert_matches_float32_brute_force, assert_same_top, brute_force


@pytest.mark.parametrize("used, k, queries", [(40_000, 200, 1), (60_000, 300, 7), (100_003, 129, 3)])
def test_threshold_selection_equals_brute_force(used, k, queries):
    generator = torch.Generator().manual_seed(used + k)
    matrix = torch.randn(used + 100, 32, generator=generator)  # rows past `used` must never come back
    q = torch.randn(queries, 32, generator=generator)
    hits = threshold_shard_topk(matrix, used, q, k)
    assert complete(hits.counts, k)
    assert_same_top(hits.scores, hits.rows, brute_force(matrix, used, q, k))
    assert (hits.rows < used).all()


def test_the_sample_lets_about_three_k_rows_through():
    generator = torch.Generator().manual_seed(3)
    used, k = 200_000, 500
    matrix = torch.randn(used, 32, generator=generator)
    q = torch.randn(8, 32, generator=generator)
    hits = threshold_shard_topk(matrix, used, q, k)
    assert ((hits.counts > k) & (hits.counts < capacity(k))).all()
    assert 2 * k < hits.counts.float().mean() < 4 * k


def test_masked_rows_never_come_back():
    generator = torch.Generator().manual_seed(11)
    used, k = 50_000, 150
    matrix = torch.randn(used, 16, generator=generator)
    q = torch.randn(5, 16, generator=generator)
    mask = torch.rand(used, generator=generator) > 0.3
    hits = threshold_shard_topk(matrix, used, q, k, mask)
    assert complete(hits.counts, k)
    assert mask[hits.rows].all()
    assert_same_top(hits.scores, hits.rows, brute_force(matrix, used, q, k, mask))


def test_a_filter_leaving_fewer_than_k_rows_is_sent_to_the_chunked_path():
    generator = torch.Generator().manual_seed(5)
    used, k = 50_000, 200
    matrix = torch.randn(used, 16, generator=generator)
    q = torch.randn(2, 16, generator=generator)
    mask = torch.zeros(used, dtype=torch.bool)
    mask[torch.randperm(used, generator=generator)[:150]] = True
    hits = threshold_shard_topk(matrix, used, q, k, mask)
    assert not complete(hits.counts, k)


def test_a_threshold_set_too_high_or_too_low_is_caught(monkeypatch):
    generator = torch.Generator().manual_seed(9)
    used, k = 50_000, 200
    matrix = torch.randn(used, 16, generator=generator)
    q = torch.randn(3, 16, generator=generator)
    monkeypatch.setattr(threshold_scan, "sample_thresholds", lambda *args: torch.full((3,), 1e9))
    assert not complete(threshold_shard_topk(matrix, used, q, k).counts, k)
    monkeypatch.setattr(threshold_scan, "sample_thresholds", lambda *args: torch.full((3,), float("-inf")))
    overflowing = threshold_shard_topk(matrix, used, q, k)
    assert (overflowing.counts == used).all() and not complete(overflowing.counts, k)


@pytest.mark.parametrize("k", [129, 1000])
def test_the_threshold_is_at_most_the_samples_rank_score(k):
    rank, stride = sample_rank(k), sample_stride(k)
    assert rank >= 25 and rank * stride >= 3 * k
    for rows in (64 * 8 * stride * rank // 4, stride * rank * 4):  # block maxima of the sample; a sample too small for them
        matrix = torch.arange(rows, dtype=torch.float32).unsqueeze(1)  # row i scores i
        q = torch.ones(1, 1)
        threshold = float(sample_thresholds(q, matrix, rows, None, k))
        sampled = torch.arange(0, rows, stride, dtype=torch.float32).sort(descending=True).values
        assert threshold <= float(sampled[rank - 1])
        if len(sampled) < 8 * rank * 16:
            assert threshold == float(sampled[rank - 1])


def test_the_reference_scan_counts_every_row_and_keeps_the_first_slots():
    rows = torch.tensor([[1.0], [5.0], [3.0], [7.0], [2.0]])
    q = torch.ones(1, 1)
    counts, scores, kept = threshold_scan_reference(q, rows, None, torch.tensor([3.0]), 2)
    assert counts.tolist() == [3]
    assert kept.tolist() == [[1, 2]] and scores.tolist() == [[5.0, 3.0]]


def test_only_shards_many_times_the_lists_take_this_path():
    assert shard_fits(1000, 4_000_000)
    assert not shard_fits(1000, 60_000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs a CUDA device")
@pytest.mark.parametrize("queries, k, masked", [(2, 1000, 0.1), (64, 1000, 0.1), (64, 200, 0.0), (300, 500, 0.5)])
def test_threshold_kernel_on_the_gpu_equals_a_float32_brute_force(queries, k, masked):
    """On the GPU machine: the path through exact_topk, as searches run it, against a float32
    brute force over the same fp16 values, ties within fp16 rounding aside."""
    from semserve.search.group_max import triton_available
    from semserve.search.topk import exact_topk, fused_applies, threshold_applies

    if not triton_available():
        pytest.skip("Triton is not importable")
    generator = torch.Generator().manual_seed(queries + k)
    rows, dim = 400_009, 256
    matrix = torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1).half().cuda()
    mask = (torch.rand(rows, generator=generator) >= masked).cuda()
    q = torch.nn.functional.normalize(torch.randn(queries, dim, generator=generator), dim=1)
    assert not fused_applies(matrix, k, queries, rows) and threshold_applies(matrix, k, queries, rows)
    hits = exact_topk([(matrix, rows, mask)], q, k, 65536, 1 << 24)
    assert_matches_float32_brute_force(hits, matrix, mask, q, k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs a CUDA device")
def test_threshold_kernel_on_the_gpu_matches_its_reference_and_falls_back():
    """The kernel's counts and lists equal the reference's (as sets), and a shard whose filter
    leaves fewer than k rows still gets its exact short lists through exact_topk."""
    from semserve.search.group_max import triton_available
    from semserve.search.threshold_scan import threshold_scan_triton
    from semserve.search.topk import exact_topk

    if not triton_available():
        pytest.skip("Triton is not importable")
    generator = torch.Generator().manual_seed(1)
    rows, dim = 200_003, 128
    matrix = torch.randn(rows, dim, generator=generator).half().cuda()
    valid = (torch.rand(rows, generator=generator) > 0.2).cuda()
    q = torch.randn(20, dim, generator=generator).half().cuda()
    thresholds = sample_thresholds(q, matrix, rows, valid, 300)
    want = threshold_scan_reference(q, matrix, valid, thresholds, capacity(300))
    got = threshold_scan_triton(q, matrix, valid, thresholds, capacity(300))
    # The thresholds are sampled rows' cuBLAS scores; the kernel sums in another order, so a row
    # right at a threshold may round to the other side of it.
    assert (got[0] - want[0]).abs().max() <= 2
    for query in range(20):
        got_rows = set(got[2][query, : int(got[0][query])].tolist())
        want_rows = set(want[2][query, : int(want[0][query])].tolist())
        assert len(got_rows ^ want_rows) <= 2
    few = torch.zeros(rows, dtype=torch.bool, device="cuda")
    few[torch.randperm(rows, generator=generator)[:100].cuda()] = True
    hits = exact_topk([(matrix, rows, few)], q.float().cpu(), 300, 65536, 1 << 24)
    assert all(len(h) == 100 for h in hits)
    assert all(bool(few[row]) for h in hits for _, row, _ in h)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs a CUDA device")
@pytest.mark.parametrize("dimension", [384, 100])
def test_no_threshold_scan_waits_for_a_kernel_compile_after_warm_up(dimension):
    """On the GPU machine: after ``warm_up``, no row count, query count, list size or mask
    compiles another variant of the scan."""
    import time

    from semserve.search.group_max import triton_available
    from semserve.search.threshold_scan import threshold_scan_triton, warm_up

    if not triton_available():
        pytest.skip("Triton is not importable")
    warm_up("cuda:0", torch.float16, dimension)
    matrix = torch.randn(200_000, dimension, device="cuda", dtype=torch.float16)
    valid = torch.ones(200_000, dtype=torch.bool, device="cuda")
    for rows in (4096, 1000, 200_000, 65_537):
        for queries in (2, 7, 64, 300):
            q = torch.randn(queries, dimension, device="cuda", dtype=torch.float16)
            thresholds = torch.full((queries,), 0.5, device="cuda")
            for mask in (None, valid[:rows]):
                torch.cuda.synchronize()
                started = time.perf_counter()
                threshold_scan_triton(q, matrix[:rows], mask, thresholds, 1000 + rows % 7)
                torch.cuda.synchronize()
                assert time.perf_counter() - started < 0.15, (rows, queries, mask is not None)
