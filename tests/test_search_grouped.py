"""The fused search path's selection logic on the CPU: group maxima (search/group_max.py's
torch reference, the definition the GPU kernel implements), the k best groups kept across
steps, and their rows rescored exactly. The kernel itself runs on the GPU machine
(tests/perf/gpu_fused_topk.py checks it against a float32 brute force)."""

from __future__ import annotations

import pytest
import torch

from semserve.search.group_max import GROUP, group_max_reference
from semserve.search.topk import grouped_shard_topk, shard_topk
from topk_checks import assert_matches_float32_brute_force, assert_same_top, brute_force


@pytest.mark.parametrize("used, step, k", [
    (1000, 256, 10),      # several steps, a ragged last group
    (4096, 4096, 5),      # one step, whole groups
    (100, 64, 50),        # k larger than the number of groups
    (37, 1024, 10),       # fewer rows than one step, ragged
    (3000, 100, 7),       # a step that is no multiple of GROUP (rounded down)
])
@pytest.mark.parametrize("queries", [1, 13])
def test_grouped_selection_equals_brute_force(used, step, k, queries):
    generator = torch.Generator().manual_seed(used + k + queries)
    matrix = torch.randn(used + 50, 24, generator=generator)  # rows beyond `used` must never come back
    q = torch.randn(queries, 24, generator=generator)
    hits = grouped_shard_topk(matrix, used, q, k, step)
    assert_same_top(hits.scores, hits.rows, brute_force(matrix, used, q, k))
    assert (hits.rows < used).all()


def test_masked_rows_never_come_back_even_when_whole_groups_are_masked():
    generator = torch.Generator().manual_seed(7)
    matrix = torch.randn(2000, 16, generator=generator)
    q = torch.randn(4, 16, generator=generator)
    mask = torch.rand(2000, generator=generator) > 0.5
    mask[: 10 * GROUP] = False  # ten whole groups excluded
    mask[1990:] = True
    hits = grouped_shard_topk(matrix, 2000, q, 12, 512, mask)
    assert mask[hits.rows[hits.scores > float("-inf")]].all()
    assert_same_top(hits.scores, hits.rows, brute_force(matrix, 2000, q, 12, mask))


def test_fewer_valid_rows_than_k_gives_short_lists():
    matrix = torch.randn(300, 8)
    mask = torch.zeros(300, dtype=torch.bool)
    mask[[3, 150, 299]] = True
    hits = grouped_shard_topk(matrix, 300, torch.randn(2, 8), 10, 128, mask)
    for rows, scores in zip(hits.rows, hits.scores):
        assert sorted(rows[scores > float("-inf")].tolist()) == [3, 150, 299]


def test_grouped_and_chunked_paths_agree():
    generator = torch.Generator().manual_seed(3)
    matrix = torch.randn(5000, 32, generator=generator)
    q = torch.randn(8, 32, generator=generator)
    grouped = grouped_shard_topk(matrix, 4900, q, 10, 1024)
    chunked = shard_topk(matrix, 4900, q, 10, 1024)
    for a, b in zip(grouped.rows, chunked.rows):
        assert set(a.tolist()) == set(b.tolist())


def test_group_maxima_are_the_maxima_of_each_group_of_rows():
    matrix = torch.randn(70, 4)
    q = torch.randn(3, 4)
    valid = torch.ones(70, dtype=torch.bool)
    valid[0] = False
    maxima = group_max_reference(q, matrix, valid)
    scores = (q @ matrix.T).masked_fill(~valid, float("-inf"))
    assert maxima.shape == (3, 3)
    torch.testing.assert_close(maxima[:, 0], scores[:, :32].amax(1))
    torch.testing.assert_close(maxima[:, 2], scores[:, 64:].amax(1))


def test_rescoring_in_query_blocks_equals_brute_force(monkeypatch):
    """Large k: candidates are gathered a block of queries at a time (RESCORE_BYTES)."""
    from semserve.search import topk

    monkeypatch.setattr(topk, "RESCORE_BYTES", 3 * 200 * GROUP * 16 * 4)  # three queries per block
    generator = torch.Generator().manual_seed(11)
    matrix = torch.randn(20000, 16, generator=generator)
    q = torch.randn(10, 16, generator=generator)
    mask = torch.rand(20000, generator=generator) > 0.3
    hits = grouped_shard_topk(matrix, 19990, q, 200, 4096, mask)
    assert hits.rows.shape == (10, 200)
    assert_same_top(hits.scores, hits.rows, brute_force(matrix, 19990, q, 200, mask))


def test_fused_path_is_taken_while_rescoring_reads_less_than_the_scan():
    from semserve.search.topk import rescoring_fits

    assert rescoring_fits(100, 1024, 4_000_000)  # 3.3M rows rescored against a 4M-row scan
    assert not rescoring_fits(128, 1024, 4_000_000)  # 4.2M rows: the chunked path
    assert rescoring_fits(10, 1024, 4_000_000)
    assert rescoring_fits(128, 1, 1_000)  # one query: always


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs a CUDA device")
@pytest.mark.parametrize("queries, k", [(1, 10), (1, 128), (64, 100), (300, 10)])
def test_fused_kernel_on_the_gpu_equals_a_float32_brute_force(queries, k):
    """On the GPU machine: the kernel's top k (through exact_topk, as searches run it) against a
    float32 brute force over the same fp16 values, ties within fp16 rounding aside."""
    from semserve.search.group_max import triton_available
    from semserve.search.topk import exact_topk, fused_applies

    if not triton_available():
        pytest.skip("Triton is not importable")
    generator = torch.Generator().manual_seed(queries + k)
    rows, dim = 300_007, 256
    matrix = torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1).half().cuda()
    mask = (torch.rand(rows, generator=generator) > 0.1).cuda()
    q = torch.nn.functional.normalize(torch.randn(queries, dim, generator=generator), dim=1)
    assert fused_applies(matrix, k, queries, rows)
    hits = exact_topk([(matrix, rows, mask)], q, k, 65536, 1 << 24)
    assert_matches_float32_brute_force(hits, matrix, mask, q, k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs a CUDA device")
@pytest.mark.parametrize("queries, k, dimension", [(1, 10, 384), (5, 128, 100), (70, 3, 768)])
def test_rescoring_kernel_on_the_gpu_equals_its_reference(queries, k, dimension):
    """On the GPU machine: the rescoring kernel gives the reference's rows, and its scores to
    one fp16 rounding step, for groups that run past the used rows and rows a mask excludes."""
    from semserve.search.group_max import rescore_reference, rescore_triton, triton_available

    if not triton_available():
        pytest.skip("Triton is not importable")
    generator = torch.Generator().manual_seed(queries * k)
    rows, used = 10_000, 9_990  # the last group is ragged
    matrix = torch.nn.functional.normalize(torch.randn(rows, dimension, generator=generator), dim=1).half().cuda()
    valid = (torch.rand(rows, generator=generator) > 0.2).cuda()
    q = torch.nn.functional.normalize(torch.randn(queries, dimension, generator=generator), dim=1).half().cuda()
    groups = torch.randint(0, -(-used // GROUP), (queries, k), generator=generator).cuda()
    groups[:, 0] = used // GROUP  # every query holds the ragged group
    for mask in (None, valid):
        want_scores, want_rows = rescore_reference(q, matrix, groups, used, mask)
        got_scores, got_rows = rescore_triton(q, matrix, groups, used, mask)
        live = torch.isfinite(want_scores)
        assert torch.equal(live, torch.isfinite(got_scores))
        assert torch.equal(got_rows[live], want_rows[live])
        assert (got_scores[live] - want_scores[live]).abs().max().item() <= 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel needs a CUDA device")
@pytest.mark.parametrize("dimension", [384, 100])
def test_no_search_waits_for_a_kernel_compile_after_warm_up(dimension):
    """On the GPU machine: after ``warm_up`` for a collection's dimension, no row count, query
    count or mask compiles another variant (a compile takes a second or more; a call, far less)."""
    import time

    from semserve.search.group_max import group_max_triton, rescore_triton, triton_available, warm_up

    if not triton_available():
        pytest.skip("Triton is not importable")
    warm_up("cuda:0", torch.float16, dimension)
    matrix = torch.randn(200_000, dimension, device="cuda", dtype=torch.float16)
    valid = torch.ones(200_000, dtype=torch.bool, device="cuda")
    for rows in (4096, 1000, 31 * GROUP, 200_000, 16 * 16 * GROUP):
        for queries in (1, 7, 64, 300):
            q = torch.randn(queries, dimension, device="cuda", dtype=torch.float16)
            for mask in (None, valid[:rows]):
                torch.cuda.synchronize()
                started = time.perf_counter()
                group_max_triton(q, matrix[:rows], mask)
                groups = torch.zeros((queries, 1 + queries % 5), dtype=torch.int64, device="cuda")
                rescore_triton(q, matrix, groups, rows, mask)
                torch.cuda.synchronize()
                assert time.perf_counter() - started < 0.15, (rows, queries, mask is not None)
