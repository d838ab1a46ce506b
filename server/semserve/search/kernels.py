"""The search's Triton kernels, in one module that imports Triton at its top: it is imported only
where Triton is (search/group_max.py and search/threshold_scan.py launch these, and hold the
torch references the CPU tests check the selection logic with).

Triton compiles a variant per "== 1" / "divisible by 16" class of each integer argument; the
counts change with every write and query batch, and a compile takes about a second, which a
search would wait for. Only the dimension and the strides of the inputs (which decide vectorised
loads; fixed per collection) are specialised.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def score_tile(q_ptr, m_ptr, num_queries, num_rows, dim, stride_q, stride_m, pid_q, pid_n,
               BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (BLOCK_Q, BLOCK_N) tile of ``queries @ rows.T`` on tensor cores, rounded to the storage
    dtype as a matmul's output would be (so the kernels and torch agree on which rows are
    ahead), returned as float32 with the tile's query and row offsets."""
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Element offsets of a large shard pass 2**31 (4M rows x 768): 64-bit row bases.
    row_base = offs_n.to(tl.int64) * stride_m
    query_base = offs_q.to(tl.int64) * stride_q
    acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        q = tl.load(q_ptr + query_base[:, None] + offs_d[None, :],
                    mask=(offs_q[:, None] < num_queries) & (offs_d[None, :] < dim), other=0.0)
        m = tl.load(m_ptr + row_base[None, :] + offs_d[:, None],
                    mask=(offs_n[None, :] < num_rows) & (offs_d[:, None] < dim), other=0.0)
        acc += tl.dot(q, m)
    return acc.to(q_ptr.dtype.element_ty).to(tl.float32), offs_q, offs_n


@triton.jit
def live_rows(valid_ptr, offs_n, num_rows, HAS_VALID: tl.constexpr):
    """The tile's rows that exist and that the row mask (tombstones, filters) lets through."""
    live = offs_n < num_rows
    if HAS_VALID:
        live = live & (tl.load(valid_ptr + offs_n, mask=offs_n < num_rows, other=0) != 0)
    return live


@triton.jit(do_not_specialize=["num_queries", "num_rows", "num_groups", "stride_out"])
def group_max_kernel(q_ptr, m_ptr, valid_ptr, out_ptr, num_queries, num_rows, dim, num_groups,
                     stride_q, stride_m, stride_out,
                     HAS_VALID: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, GROUP_SIZE: tl.constexpr):
    """Per query, the maximum of every GROUP_SIZE rows' scores (search/group_max.py). The output's
    stride is the group count, which changes with the rows like the counts do."""
    # Axis 0 (fastest) walks the query tiles of one row tile, so a row tile read from HBM is
    # reused from L2 by every query tile.
    pid_q = tl.program_id(0)
    pid_n = tl.program_id(1)
    scores, offs_q, offs_n = score_tile(q_ptr, m_ptr, num_queries, num_rows, dim, stride_q, stride_m, pid_q, pid_n,
                                        BLOCK_Q, BLOCK_N, BLOCK_D)
    keep = live_rows(valid_ptr, offs_n, num_rows, HAS_VALID)
    scores = tl.where(keep[None, :], scores, float("-inf"))
    maxima = tl.max(tl.reshape(scores, (BLOCK_Q, BLOCK_N // GROUP_SIZE, GROUP_SIZE)), axis=2)
    offs_g = pid_n * (BLOCK_N // GROUP_SIZE) + tl.arange(0, BLOCK_N // GROUP_SIZE)
    tl.store(out_ptr + offs_q.to(tl.int64)[:, None] * stride_out + offs_g[None, :],
             maxima.to(out_ptr.dtype.element_ty),
             mask=(offs_q[:, None] < num_queries) & (offs_g[None, :] < num_groups))


@triton.jit(do_not_specialize=["num_queries", "num_rows", "slots"])
def threshold_scan_kernel(q_ptr, m_ptr, valid_ptr, thresholds_ptr, counts_ptr, scores_ptr, rows_ptr,
                          num_queries, num_rows, dim, slots, stride_q, stride_m,
                          HAS_VALID: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    """Rows at or above their query's threshold appended to the query's list (search/threshold_scan.py)."""
    pid_q = tl.program_id(0)
    pid_n = tl.program_id(1)
    scores, offs_q, offs_n = score_tile(q_ptr, m_ptr, num_queries, num_rows, dim, stride_q, stride_m, pid_q, pid_n,
                                        BLOCK_Q, BLOCK_N, BLOCK_D)
    live = live_rows(valid_ptr, offs_n, num_rows, HAS_VALID)
    asked = offs_q < num_queries
    thresholds = tl.load(thresholds_ptr + offs_q, mask=asked, other=float("inf"))
    passed = live[None, :] & asked[:, None] & (scores >= thresholds[:, None])
    # A tile with no row above any threshold skips the appends (one uniform branch).
    if tl.max(tl.max(passed.to(tl.int32), axis=1), axis=0) > 0:
        # One atomic per passing score takes its query's next slot. Measured on an H100 with
        # 64 queries (docs/benchmarks.md), this costs 0.26 ms over the group maxima's scan
        # where one atomic per query and tile plus a running sum cost 1.3 ms.
        zeros = tl.zeros((BLOCK_Q, BLOCK_N), tl.int32)
        slot = tl.atomic_add(counts_ptr + offs_q[:, None] + zeros, 1, mask=passed, sem="relaxed")
        keep = passed & (slot < slots)
        out = offs_q.to(tl.int64)[:, None] * slots + slot
        tl.store(scores_ptr + out, scores, mask=keep)
        tl.store(rows_ptr + out, offs_n[None, :] + zeros, mask=keep)


@triton.jit(do_not_specialize=["num_rows", "candidates", "stride_groups"])
def rescore_kernel(q_ptr, m_ptr, groups_ptr, valid_ptr, scores_ptr, rows_ptr, num_rows, dim, candidates,
                   stride_q, stride_m, stride_groups,
                   HAS_VALID: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                   GROUP_SIZE: tl.constexpr):
    """Exact scores of one query's kept groups' rows (search/group_max.py). One program scores
    BLOCK_R of one query's candidate rows, read where they lie: no gathered copy of their
    vectors, no index arithmetic left to separate kernels."""
    pid_q = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    listed = offs_c < candidates
    group = tl.load(groups_ptr + pid_q * stride_groups + offs_c // GROUP_SIZE, mask=listed, other=0)
    row = group.to(tl.int64) * GROUP_SIZE + offs_c % GROUP_SIZE
    live = listed & (row < num_rows)
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        q = tl.load(q_ptr + pid_q * stride_q + offs_d, mask=offs_d < dim, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + row[:, None] * stride_m + offs_d[None, :],
                    mask=live[:, None] & (offs_d[None, :] < dim), other=0.0).to(tl.float32)
        acc += tl.sum(m * q[None, :], axis=1)
    # Rounded to the storage dtype, as the scan's maxima and a matmul's output are.
    scores = acc.to(q_ptr.dtype.element_ty).to(tl.float32)
    if HAS_VALID:
        live = live & (tl.load(valid_ptr + row, mask=live, other=0) != 0)
    out = pid_q.to(tl.int64) * candidates + offs_c
    tl.store(scores_ptr + out, tl.where(live, scores, float("-inf")), mask=listed)
    tl.store(rows_ptr + out, tl.where(live, row, 0), mask=listed)
