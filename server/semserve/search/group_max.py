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


def group_max_triton(queries: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``group_max_reference`` as one Triton kernel (CUDA, fp16 or bf16 rows and queries)."""
    import triton

    from semserve.search import kernels

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
    kernels.group_max_kernel[grid](
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


def rescore_triton(queries: torch.Tensor, matrix: torch.Tensor, groups: torch.Tensor, used_rows: int,
                   valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``rescore_reference`` as one Triton kernel (CUDA, fp16 or bf16): it replaces a dozen
    launches (index arithmetic, a gather, a batched matmul, masks), which for a single query
    cost more than its scan of a million rows."""
    import triton

    from semserve.search import kernels

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
    kernels.rescore_kernel[grid](
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
