"""Top-k for large k (up to MAX_THRESHOLD_K) in one pass over a GPU shard: rows scoring at or
above a per-query threshold are written out as they are computed; everything else stays on chip.

Group maxima (search/group_max.py) suit small k: k groups of GROUP rows are rescored per query.
For k = 1000 that is 32,000 rows per query, and 64 queries re-read 3 GB, as much as the scan
itself (docs/benchmarks.md). Here the threshold comes first instead:

1. **Sample.** Every ``sample_stride(k)``-th row is scored (one strided matmul, no copy), and
   each query's threshold is about the score of rank ``sample_rank(k)`` in its sample: stride x
   rank, 3k, rows of the shard are expected to reach it.
2. **Scan.** One Triton kernel computes tiles of ``queries x rows`` scores on tensor cores,
   rounds them to the storage dtype as a matmul's output would be, and appends the rows at or
   above their query's threshold to that query's list (an atomic counter per query reserves a
   tile's slots; a list holds ``capacity(k)`` rows).
3. **Select.** ``torch.topk`` over the lists.

Exact, with a check: if at least k live rows reached the threshold, the k-th best score is at or
above it, so every row of the top k is in the list. The counters come back with the candidates,
and a shard whose count is below k (a filter that leaves few rows, an unlucky sample) or above
the capacity is searched again by the chunked path (``complete``), so the sample only decides
the speed, never the result.

``threshold_scan_reference`` is the scan in plain torch: the CPU tests check the selection with
it, and it is the definition the kernel must match (up to the order of each list).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")
# Largest k served by this path; beyond it the lists (8k rows a query) outgrow their use.
MAX_THRESHOLD_K = 1024
# One row in 16 to 64 is scored to set the thresholds (``sample_stride``): 2-6% more reads
# than the scan alone.
MIN_SAMPLE_STRIDE, MAX_SAMPLE_STRIDE = 16, 64
# The sample's rank error is about stride x sqrt(rank) rows: the stride keeps the rank at least
# this high where it can.
MIN_SAMPLE_RANK = 32
# Sample scores per block whose maximum stands for the block when the threshold is picked.
SAMPLE_BLOCK = 16
# Rows expected at or above the threshold, per k: 3k leaves k = 129 (stride 16, rank 25) more
# than three times the sample's rank error above k, and k = 1000 (stride 64, rank 47) more
# than four.
EXPECTED_PER_K = 3
# Rows a query's list holds, per k: the expected 3k with a margin as wide again as the one below.
CAPACITY_PER_K = 8


def sample_stride(k: int) -> int:
    """Rows per sampled row: sparser for larger k, while the rank stays at MIN_SAMPLE_RANK. At 64
    queries and k = 1000 over 4M rows, stride 16 cost 0.38 ms of a 2.6 ms search (docs/benchmarks.md)."""
    return max(MIN_SAMPLE_STRIDE, min(MAX_SAMPLE_STRIDE, EXPECTED_PER_K * k // MIN_SAMPLE_RANK))


def sample_rank(k: int) -> int:
    """The rank in the sample whose score becomes the threshold (about 3k rows of the shard reach it)."""
    return -(-EXPECTED_PER_K * k // sample_stride(k))


def capacity(k: int) -> int:
    return CAPACITY_PER_K * k


def shard_fits(k: int, used_rows: int) -> bool:
    """Whether a shard is large enough for the threshold to select: its lists must be a small
    share of it, and its sample must hold the rank."""
    return used_rows >= 8 * capacity(k)


@dataclass
class ThresholdHits:
    """A shard's candidates (scores and rows, both (queries, <=k)) with each query's count of
    rows at or above its threshold, which ``complete`` checks once they reach the host."""

    scores: torch.Tensor
    rows: torch.Tensor
    counts: torch.Tensor


def complete(counts: torch.Tensor, k: int) -> bool:
    """Whether every query's list held its whole top k: at least k rows reached the threshold,
    and no more than the list could keep."""
    return bool(((counts >= k) & (counts <= capacity(k))).all())


def sample_thresholds(queries: torch.Tensor, matrix: torch.Tensor, used_rows: int,
                      mask: torch.Tensor | None, k: int) -> torch.Tensor:
    """Per query, about the score of rank ``sample_rank(k)`` among every ``sample_stride(k)``-th live
    row (float32; -inf when the sample has fewer live rows, which lets every row through and so
    sends the shard to the chunked path).

    Any threshold keeps the result exact (``complete`` checks it), so a cheaper one is taken
    where it is close: the rank's score among the maxima of blocks of SAMPLE_BLOCK sample
    scores. It is at most the sample's own rank score (that many blocks have a score at least
    as high), and a ``torch.topk`` over 1024 queries' samples of 4M rows took 1.9 ms where
    over their block maxima it takes a tenth of that.
    """
    stride = sample_stride(k)
    sample = matrix[:used_rows:stride]
    scores = torch.matmul(queries, sample.T)
    if mask is not None:
        scores.masked_fill_(~mask[:used_rows:stride], NEG_INF)
    rank = sample_rank(k)
    blocks = scores.shape[1] // SAMPLE_BLOCK
    if blocks >= 8 * rank:
        scores = scores[:, : blocks * SAMPLE_BLOCK].view(-1, blocks, SAMPLE_BLOCK).amax(dim=2)
    rank = min(rank, scores.shape[1])
    return torch.topk(scores, rank, dim=1, sorted=False).values.amin(dim=1).float()


def threshold_scan_reference(queries: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None,
                             thresholds: torch.Tensor, slots: int
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts, scores, rows): per query, how many live rows scored at or above its threshold,
    and the first ``slots`` of them (scores float32 after rounding to the rows' dtype, rows
    int32; unused slots -inf). The kernel writes the same rows in another order."""
    scores = torch.matmul(queries, rows.T).float()
    passed = scores >= thresholds[:, None]
    if valid is not None:
        passed &= valid[None, :]
    counts = passed.sum(dim=1).to(torch.int32)
    out_scores = torch.full((queries.shape[0], slots), NEG_INF, dtype=torch.float32, device=rows.device)
    out_rows = torch.zeros((queries.shape[0], slots), dtype=torch.int32, device=rows.device)
    for query in range(queries.shape[0]):
        found = torch.nonzero(passed[query]).flatten()[:slots]
        out_scores[query, : len(found)] = scores[query, found]
        out_rows[query, : len(found)] = found
    return counts, out_scores, out_rows


def _tiles(num_queries: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_Q, BLOCK_N, BLOCK_D, warps, stages). From a sweep on an H100 over 4M x 768 rows
    (docs/benchmarks.md): narrower row tiles than the group maxima's, as the appends after the
    dot hold registers of their own (64 queries: 2.09 ms against 2.37 with the group maxima's
    tile; 1024 queries: 25.4 against 28.2 ms)."""
    if num_queries <= 16:
        return 16, 128, 64, 4, 4
    if num_queries <= 64:
        return 64, 64, 64, 8, 4
    return 64, 64, 64, 4, 3


def threshold_scan_triton(queries: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None,
                          thresholds: torch.Tensor, slots: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``threshold_scan_reference`` as one Triton kernel (CUDA, fp16 or bf16 rows and queries)."""
    import triton

    from semserve.search import kernels

    num_queries, dim = queries.shape
    num_rows = rows.shape[0]
    counts = torch.zeros(num_queries, dtype=torch.int32, device=rows.device)
    out_scores = torch.full((num_queries, slots), NEG_INF, dtype=torch.float32, device=rows.device)
    out_rows = torch.empty((num_queries, slots), dtype=torch.int32, device=rows.device)
    queries = queries.contiguous()
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    block_q, block_n, block_d, warps, stages = _tiles(num_queries)
    grid = (triton.cdiv(num_queries, block_q), triton.cdiv(num_rows, block_n))
    kernels.threshold_scan_kernel[grid](
        queries, rows, valid.view(torch.uint8) if valid is not None else counts, thresholds.contiguous(),
        counts, out_scores, out_rows, num_queries, num_rows, dim, slots, queries.stride(0), rows.stride(0),
        HAS_VALID=valid is not None, BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=warps, num_stages=stages,
    )
    return counts, out_scores, out_rows


def threshold_shard_topk(matrix: torch.Tensor, used_rows: int, queries: torch.Tensor, k: int,
                         mask: torch.Tensor | None = None, scan=threshold_scan_reference) -> ThresholdHits:
    """The top-k candidates of one shard through a sampled threshold and one scan (``scan``:
    the Triton kernel on a GPU, by default the torch reference). Nothing here waits for the
    device: ``complete`` judges the counts once they are on the host."""
    thresholds = sample_thresholds(queries, matrix, used_rows, mask, k)
    valid = mask[:used_rows] if mask is not None else None
    counts, scores, rows = scan(queries, matrix[:used_rows], valid, thresholds, capacity(k))
    best, picked = torch.topk(scores, min(k, scores.shape[1]), dim=1, sorted=False)
    return ThresholdHits(best, torch.gather(rows, 1, picked).long(), counts)


@functools.cache
def warm_up(device: str, dtype: torch.dtype, dimension: int = 16) -> None:
    """Compile the scan's variants (three tile shapes, with and without a row mask) on a tiny
    input, so that no search waits for a compile."""
    rows = torch.zeros((64, dimension), dtype=dtype, device=device)
    valid = torch.ones(64, dtype=torch.bool, device=device)
    for num_queries in (1, 32, 128):
        queries = torch.zeros((num_queries, dimension), dtype=dtype, device=device)
        thresholds = torch.zeros(num_queries, dtype=torch.float32, device=device)
        threshold_scan_triton(queries, rows, None, thresholds, 8)
        threshold_scan_triton(queries, rows, valid, thresholds, 8)
    torch.cuda.synchronize(device)
