"""Scores reduced as they are computed: the maximum of every group of GROUP consecutive rows'
scores, per query, without the (queries x rows) score matrix ever reaching memory.

Plain ``torch.topk(q @ M.T)`` over 1024 queries and 4M rows writes 8 GB of fp16 scores and
reads them back; the matmul itself is a fraction of that time (docs/benchmarks.md). A Triton
kernel computes tiles of scores on tensor cores and writes one maximum per GROUP rows instead,
GROUP times less. ``topk.grouped_shard_topk`` then keeps the k best groups per query (a row of
the top k lies in one of them) and scores only their rows exactly.

``group_max_reference`` is the same reduction in plain torch: the CPU tests check the selection
logic with it, and it is the definition the kernel must match.
"""

from __future__ import annotations

import functools

import torch

GROUP = 32
NEG_INF = float("-inf")


def group_max_reference(queries: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(queries, ceil(rows / GROUP)) maxima of ``queries @ rows.T`` in the rows' dtype; rows
    excluded by ``valid`` (and the padding of a ragged last group) score -inf."""
    scores = torch.matmul(queries, rows.T)
    if valid is not None:
        scores = scores.masked_fill(~valid, NEG_INF)
    n = rows.shape[0]
    padded = -(-n // GROUP) * GROUP
    if padded != n:
        scores = torch.nn.functional.pad(scores, (0, padded - n), value=NEG_INF)
    return scores.view(queries.shape[0], padded // GROUP, GROUP).amax(dim=2)


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # not installed, or no usable backend
        return False
    return True


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    # Triton compiles a variant per "== 1" / "divisible by 16" class of each integer argument; the
    # counts change with every write and query batch, and a compile takes about a second, which
    # a search would wait for. Only the dimension and the strides of the inputs (which decide
    # vectorised loads; fixed per collection) are specialised. The output's stride is the group
    # count, which changes with the rows like the counts do.
    @triton.jit(do_not_specialize=["num_queries", "num_rows", "num_groups", "stride_out"])
    def group_max_kernel(q_ptr, m_ptr, valid_ptr, out_ptr, num_queries, num_rows, dim, num_groups,
                         stride_q, stride_m, stride_out,
                         HAS_VALID: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, GROUP_SIZE: tl.constexpr):
        # Axis 0 (fastest) walks the query tiles of one row tile, so a row tile read from HBM is
        # reused from L2 by every query tile.
        pid_q = tl.program_id(0)
        pid_n = tl.program_id(1)
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
        # Rounded to the storage dtype as a matmul's output would be, so the kernel's maxima and
        # the exact rescoring agree on which rows are ahead.
        scores = acc.to(q_ptr.dtype.element_ty).to(tl.float32)
        keep = offs_n < num_rows
        if HAS_VALID:
            keep = keep & (tl.load(valid_ptr + offs_n, mask=offs_n < num_rows, other=0) != 0)
        scores = tl.where(keep[None, :], scores, float("-inf"))
        maxima = tl.max(tl.reshape(scores, (BLOCK_Q, BLOCK_N // GROUP_SIZE, GROUP_SIZE)), axis=2)
        offs_g = pid_n * (BLOCK_N // GROUP_SIZE) + tl.arange(0, BLOCK_N // GROUP_SIZE)
        tl.store(out_ptr + offs_q.to(tl.int64)[:, None] * stride_out + offs_g[None, :],
                 maxima.to(out_ptr.dtype.element_ty),
                 mask=(offs_q[:, None] < num_queries) & (offs_g[None, :] < num_groups))

    return group_max_kernel


def group_max_triton(queries: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``group_max_reference`` as one Triton kernel (CUDA, fp16 or bf16 rows and queries)."""
    import triton

    num_queries, dim = queries.shape
    num_rows = rows.shape[0]
    num_groups = -(-num_rows // GROUP)
    out = torch.empty((num_queries, num_groups), dtype=rows.dtype, device=rows.device)
    queries = queries.contiguous()
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    # Tile shapes from a sweep on an H100 over 4M x 768 rows (docs/benchmarks.md), kept within
    # an A100's shared memory. Few queries: the scan is bound by reading the rows, and a deeper
    # slice of each row per step (BLOCK_D 128) read them at 1.03x a device copy's traffic where
    # BLOCK_D 64 reached 0.95x; many queries: square tiles for the tensor cores.
    if num_queries <= 16:
        block_q, block_n, block_d, warps, stages = 16, 128, 128, 4, 4
    elif num_queries <= 64:
        block_q, block_n, block_d, warps, stages = 64, 64, 128, 4, 3
    else:
        block_q, block_n, block_d, warps, stages = 128, 128, 64, 8, 3
    grid = (triton.cdiv(num_queries, block_q), triton.cdiv(num_rows, block_n))
    valid_arg = valid.view(torch.uint8) if valid is not None else out
    _kernel()[grid](
        queries, rows, valid_arg, out, num_queries, num_rows, dim, num_groups,
        queries.stride(0), rows.stride(0), out.stride(0),
        HAS_VALID=valid is not None, BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d, GROUP_SIZE=GROUP,
        num_warps=warps, num_stages=stages,
    )
    return out


def rescore_reference(queries: torch.Tensor, matrix: torch.Tensor, groups: torch.Tensor, used_rows: int,
                      valid: torch.Tensor | None, block_bytes: int = 1 << 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact scores of the rows of each query's kept groups: (scores, rows), both (queries,
    groups x GROUP); scores in float32 after rounding to the matrix's dtype, -inf for rows past
    ``used_rows`` or excluded by ``valid``. The definition ``rescore_triton`` must match.

    The candidates' vectors are gathered for a block of queries at a time, under
    ``block_bytes``: (queries, k x GROUP, dim) would be 6 GB for 1024 queries with k = 128 at
    768 dimensions.
    """
    num_queries = queries.shape[0]
    rows = (groups.unsqueeze(2) * GROUP + torch.arange(GROUP, device=matrix.device)).reshape(num_queries, -1)
    outside = rows >= used_rows
    rows = rows.clamp_(max=used_rows - 1)
    per_query = rows.shape[1] * matrix.shape[1] * matrix.element_size()
    block = max(1, block_bytes // per_query)
    parts = []
    for first in range(0, num_queries, block):
        some = rows[first:first + block]
        scores = torch.bmm(matrix[some], queries[first:first + block].unsqueeze(2)).squeeze(2)
        scores.masked_fill_(outside[first:first + block], NEG_INF)
        if valid is not None:
            scores.masked_fill_(~valid[some], NEG_INF)
        parts.append(scores)
    scores = parts[0] if len(parts) == 1 else torch.cat(parts)
    return scores.float(), rows


@functools.cache
def _rescore_kernel():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["num_rows", "candidates", "stride_groups"])
    def rescore_kernel(q_ptr, m_ptr, groups_ptr, valid_ptr, scores_ptr, rows_ptr, num_rows, dim, candidates,
                       stride_q, stride_m, stride_groups,
                       HAS_VALID: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                       GROUP_SIZE: tl.constexpr):
        # One program scores BLOCK_R of one query's candidate rows, read where they lie: no
        # gathered copy of their vectors, no index arithmetic left to separate kernels.
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

    return rescore_kernel


def rescore_triton(queries: torch.Tensor, matrix: torch.Tensor, groups: torch.Tensor, used_rows: int,
                   valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``rescore_reference`` as one Triton kernel (CUDA, fp16 or bf16): it replaces a dozen
    launches (index arithmetic, a gather, a batched matmul, masks), which for a single query
    cost more than its scan of a million rows."""
    import triton

    num_queries, dim = queries.shape
    groups = groups.contiguous()
    candidates = groups.shape[1] * GROUP
    scores = torch.empty((num_queries, candidates), dtype=torch.float32, device=matrix.device)
    rows = torch.empty((num_queries, candidates), dtype=torch.int64, device=matrix.device)
    if matrix.stride(1) != 1:
        matrix = matrix.contiguous()
    queries = queries.contiguous()
    block_r = 64
    grid = (num_queries, triton.cdiv(candidates, block_r))
    _rescore_kernel()[grid](
        queries, matrix, groups, valid.view(torch.uint8) if valid is not None else scores, scores, rows,
        used_rows, dim, candidates, queries.stride(0), matrix.stride(0), groups.stride(0),
        HAS_VALID=valid is not None, BLOCK_R=block_r, BLOCK_D=64, GROUP_SIZE=GROUP, num_warps=4,
    )
    return scores, rows


@functools.cache
def warm_up(device: str, dtype: torch.dtype, dimension: int = 16) -> None:
    """Compile every variant the searches of one device, dtype and dimension use (three tile
    shapes and the rescoring, with and without a row mask) on a tiny input, so that no search
    waits for a compile. Dimensions in one specialisation class (say, multiples of 16) share
    their variants."""
    rows = torch.zeros((64, dimension), dtype=dtype, device=device)
    valid = torch.ones(64, dtype=torch.bool, device=device)
    for num_queries in (1, 32, 128):
        queries = torch.zeros((num_queries, dimension), dtype=dtype, device=device)
        group_max_triton(queries, rows, None)
        group_max_triton(queries, rows, valid)
        groups = torch.zeros((num_queries, 2), dtype=torch.int64, device=device)
        rescore_triton(queries, rows, groups, 64, None)
        rescore_triton(queries, rows, groups, 64, valid)
    torch.cuda.synchronize(device)
