"""Exact top-k by chunked scoring: pure functions over tensors, no state.

Each shard is scored in steps of ``chunk_rows`` rows, so the score buffer is bounded by
queries x chunk_rows whatever the corpus size. On a GPU (fp16/bf16 shards) no score matrix is
written at all: for k <= MAX_FUSED_K a Triton kernel reduces scores to group maxima as it
computes them (``grouped_shard_topk``, search/group_max.py); for larger k, up to
MAX_THRESHOLD_K, a kernel keeps only the rows above a sampled threshold
(search/threshold_scan.py). A chunked step is one matmul and one ``torch.topk`` on the
shard's device; the running best list stays on the device too, so a GPU shard is searched without
any host round trip until its final k candidates come back. Shards are then merged on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from semserve.search.group_max import (
    GROUP,
    group_max_reference,
    group_max_triton,
    rescore_reference,
    rescore_triton,
    triton_available,
)
from semserve.search.threshold_scan import (
    MAX_THRESHOLD_K,
    ThresholdHits,
    complete,
    shard_fits,
    threshold_scan_triton,
    threshold_shard_topk,
)

NEG_INF = float("-inf")
# The fused path rescores k x GROUP rows per query. Measured on an H100 (docs/benchmarks.md),
# 64 queries with k = 1000 took as long fused as chunked (6.6 against 6.8 ms), so beyond this k
# the chunked path serves; below it, only while those reads stay under the scan's own.
MAX_FUSED_K = 128
# Rows gathered for rescoring at once, in bytes: queries are rescored in blocks under this.
RESCORE_BYTES = 1 << 28
# Scores per block in the two-level selection of ``chunk_topk``.
BLOCK = 64
# A lone GPU shard's candidates are put best first on the device from this many (queries x k) on:
# sorting and gathering 64 x 1000 of them on the host took about 3 ms a call on an H100 host
# (docs/benchmarks.md, run F); a few are sorted faster on the host than a launch costs.
SORT_ON_DEVICE = 4096


@dataclass
class ShardHits:
    """Best candidates of one shard: scores and shard-local rows, both (queries, <=k), in no set order."""

    scores: torch.Tensor
    rows: torch.Tensor


def step_rows(chunk_rows: int, num_queries: int, max_score_elements: int) -> int:
    """Rows per scoring step: at least ``chunk_rows``; few queries may take a bigger step.

    A single query over 65536 rows is only tens of microseconds of device time, so launching
    kernels would dominate; letting the step grow until the score buffer reaches
    ``max_score_elements`` keeps the device busy while the buffer stays bounded.
    """
    return max(chunk_rows, max_score_elements // max(num_queries, 1))


def chunk_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of each row of a contiguous (queries, n) score buffer: (values, columns), unsorted.

    ``torch.topk`` over long rows makes several radix passes over the whole buffer. Instead,
    take the maximum of every block of BLOCK scores (one pass), keep the k blocks with the
    largest maxima, and select among their k x BLOCK scores. This is exact: a score outside
    those blocks has k block maxima at least as large above it, so it cannot be in the top k
    (ties aside).
    """
    num_queries, n = scores.shape
    blocks = n // BLOCK
    if blocks < 4 * k:
        return torch.topk(scores, min(k, n), dim=1, sorted=False)
    head = blocks * BLOCK
    grid = scores[:, :head].view(num_queries, blocks, BLOCK)
    _, top_blocks = torch.topk(grid.amax(dim=2), k, dim=1, sorted=False)
    offsets = torch.arange(BLOCK, device=scores.device)
    candidates = torch.gather(grid, 1, top_blocks.unsqueeze(2).expand(num_queries, k, BLOCK))
    candidates = candidates.reshape(num_queries, k * BLOCK)
    columns = (top_blocks.unsqueeze(2) * BLOCK + offsets).reshape(num_queries, k * BLOCK)
    if head < n:  # the ragged tail joins the candidates as is
        candidates = torch.cat((candidates, scores[:, head:]), dim=1)
        tail = torch.arange(head, n, device=scores.device).expand(num_queries, n - head)
        columns = torch.cat((columns, tail), dim=1)
    values, picked = torch.topk(candidates, k, dim=1, sorted=False)
    return values, torch.gather(columns, 1, picked)


_SIGN_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _signs(packed: torch.Tensor, dimension: int, dtype: torch.dtype) -> torch.Tensor:
    """Packed sign bits (rows, ceil(dimension / 8)) as ±1 (rows, dimension), high bit first."""
    key = (packed.device, dtype)
    table = _SIGN_TABLES.get(key)
    if table is None:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(7, -1, -1)) & 1
        table = _SIGN_TABLES[key] = (bits * 2 - 1).to(device=packed.device, dtype=dtype)
    return table[packed.long()].reshape(packed.shape[0], -1)[:, :dimension]


def shard_topk(
    matrix: torch.Tensor,
    used_rows: int,
    queries: torch.Tensor,
    k: int,
    chunk_rows: int,
    mask: torch.Tensor | None = None,
) -> ShardHits:
    """Top-k of ``queries @ matrix[:used_rows].T`` for every query, scanning ``chunk_rows`` rows at a time.

    ``queries`` must already be on the matrix's device and in its dtype; the returned scores are
    float32 (rounded to the storage dtype first when that is narrower: fp16 shards give fp16-exact
    scores).
    ``mask`` (bool, at least ``used_rows`` long) marks the rows that may be returned; excluded
    rows score -inf and are not counted as hits (``Ranked``). Fewer than k candidates come back when
    the shard is smaller than k.
    """
    num_queries = queries.shape[0]
    device = matrix.device
    # Scores stay in the matmul's output dtype through the selection (an fp16 buffer is half
    # the traffic of an fp32 one); only the k survivors are widened to float32.
    best_scores = torch.empty((num_queries, 0), dtype=queries.dtype, device=device)
    best_rows = torch.empty((num_queries, 0), dtype=torch.long, device=device)
    for start in range(0, used_rows, chunk_rows):
        stop = min(start + chunk_rows, used_rows)
        chunk = matrix[start:stop]
        if chunk.dtype == torch.int8:  # int8 storage: widened a chunk at a time (search/compact.py)
            chunk = chunk.to(queries.dtype)
        elif chunk.dtype == torch.uint8:  # binary storage: packed signs expanded to ±1
            chunk = _signs(chunk, queries.shape[1], queries.dtype)
        scores = torch.matmul(queries, chunk.T)
        if mask is not None:
            scores.masked_fill_(~mask[start:stop], NEG_INF)
        chunk_scores, chunk_rows_local = chunk_topk(scores, k)
        chunk_rows_local += start
        if best_scores.shape[1] == 0:
            best_scores, best_rows = chunk_scores, chunk_rows_local
            continue
        merged_scores = torch.cat((best_scores, chunk_scores), dim=1)
        merged_rows = torch.cat((best_rows, chunk_rows_local), dim=1)
        keep = min(k, merged_scores.shape[1])
        best_scores, picked = torch.topk(merged_scores, keep, dim=1, sorted=False)
        best_rows = torch.gather(merged_rows, 1, picked)
    return ShardHits(best_scores.float(), best_rows)


def fused_applies(matrix: torch.Tensor, k: int, num_queries: int = 1, used_rows: int | None = None) -> bool:
    """Whether a shard is searched by the fused kernel (search/group_max.py): a CUDA shard in
    fp16 or bf16, Triton importable, k at most MAX_FUSED_K, and (given the shard's rows) the
    rescoring's k x GROUP rows per query no more than the scan reads: 1024 queries with k = 100
    rescore 3.3M rows, most of a 4M-row scan; with k = 128, more than the scan."""
    if not (matrix.device.type == "cuda" and matrix.dtype in (torch.float16, torch.bfloat16)
            and k <= MAX_FUSED_K and triton_available()):
        return False
    return used_rows is None or rescoring_fits(k, num_queries, used_rows)


def threshold_applies(matrix: torch.Tensor, k: int, num_queries: int, used_rows: int) -> bool:
    """Whether a shard the fused path does not take is searched through a sampled threshold
    (search/threshold_scan.py): a CUDA shard in fp16 or bf16, Triton importable, k at most
    MAX_THRESHOLD_K, enough rows for the threshold to select, and more than one query. One
    query's scan is a read of the shard either way, and on an H100 the chunked path was 4%
    faster for it than sampling first (docs/benchmarks.md)."""
    return (matrix.device.type == "cuda" and matrix.dtype in (torch.float16, torch.bfloat16)
            and k <= MAX_THRESHOLD_K and num_queries > 1 and shard_fits(k, used_rows) and triton_available())


def rescoring_fits(k: int, num_queries: int, used_rows: int) -> bool:
    """Whether rescoring k x GROUP rows per query reads no more rows than scanning the shard
    (one query always fits: its rescoring is small next to any scan worth a kernel)."""
    return num_queries * k * GROUP <= max(used_rows, k * GROUP)


def _rescore_in_blocks(queries, matrix, groups, used_rows, mask):
    """The reference rescoring, its gathers bounded by RESCORE_BYTES (read when called, so a
    test can lower it)."""
    return rescore_reference(queries, matrix, groups, used_rows, mask, RESCORE_BYTES)


def grouped_shard_topk(
    matrix: torch.Tensor,
    used_rows: int,
    queries: torch.Tensor,
    k: int,
    step_rows: int,
    mask: torch.Tensor | None = None,
    group_max=group_max_reference,
    rescore=None,
) -> ShardHits:
    """``shard_topk`` through group maxima: ``group_max`` gives, per query, the best score of
    every GROUP consecutive rows (one kernel on a GPU, no score matrix in memory); the k groups
    with the best maxima are kept across steps, and only their rows are scored exactly.

    Exact: a row outside those groups has k group maxima at least as large above it, so it is
    not in the top k (ties aside). ``step_rows`` (a multiple of GROUP) bounds the maxima buffer.
    ``rescore`` scores the kept groups' rows (search/group_max.py; by default the torch reference).
    """
    rescore = rescore or _rescore_in_blocks
    step_rows = max(GROUP, step_rows // GROUP * GROUP)
    kept_maxima, kept_groups = [], []
    for start in range(0, used_rows, step_rows):
        stop = min(start + step_rows, used_rows)
        valid = mask[start:stop] if mask is not None else None
        maxima = group_max(queries, matrix[start:stop], valid)
        keep = min(k, maxima.shape[1])
        values, groups = torch.topk(maxima, keep, dim=1, sorted=False)
        kept_maxima.append(values)
        kept_groups.append(groups + start // GROUP if start else groups)
    maxima = kept_maxima[0] if len(kept_maxima) == 1 else torch.cat(kept_maxima, dim=1)
    groups = kept_groups[0] if len(kept_groups) == 1 else torch.cat(kept_groups, dim=1)
    if maxima.shape[1] > k:
        _, picked = torch.topk(maxima, k, dim=1, sorted=False)
        groups = torch.gather(groups, 1, picked)
    scores, rows = rescore(queries, matrix, groups, used_rows, mask)
    best, picked = torch.topk(scores, min(k, scores.shape[1]), dim=1, sorted=False)
    return ShardHits(best, torch.gather(rows, 1, picked))


def merge_topk(
    per_shard: list[tuple[torch.Tensor, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge shards' candidates (scores, global keys; both on the CPU) into one sorted top-k.

    Returns (scores, keys), each (queries, <=k), best first; -inf entries (masked rows) remain
    and are not counted as hits (``Ranked``).
    """
    scores = torch.cat([s for s, _ in per_shard], dim=1)
    keys = torch.cat([g for _, g in per_shard], dim=1)
    keep = min(k, scores.shape[1])
    top_scores, picked = torch.topk(scores, keep, dim=1, sorted=True)
    return top_scores, torch.gather(keys, 1, picked)


@dataclass
class Ranked:
    """Every query's hits as arrays, best first: ``scores``, ``shards`` and ``rows`` (all
    (queries, <=k)), of which the first ``counts[q]`` of query q are hits (masked rows, scored
    -inf, sort last and are not counted). Kept as arrays so that result building costs C loops,
    not Python per hit: 64 queries with k = 1000 took 515-600 ms over gRPC with a Python object
    per hit and 194-212 ms with these (docs/benchmarks.md)."""

    scores: np.ndarray
    shards: np.ndarray
    rows: np.ndarray
    counts: np.ndarray

    def columns(self, ids_by_shard: Sequence[Sequence]) -> tuple[list[list], list[list[float]]]:
        """Per query, the hits' ids (``ids_by_shard[shard][row]``) and scores, as lists."""
        counts = self.counts.tolist()
        scores = [row[:n] for row, n in zip(self.scores.tolist(), counts)]
        if len(ids_by_shard) == 1:
            lookup = ids_by_shard[0].__getitem__
            ids = [list(map(lookup, row[:n])) for row, n in zip(self.rows.tolist(), counts)]
        else:
            ids = [[ids_by_shard[s][r] for s, r in zip(shard_row[:n], row[:n])]
                   for shard_row, row, n in zip(self.shards.tolist(), self.rows.tolist(), counts)]
        return ids, scores

    def as_lists(self) -> list[list[tuple[int, int, float]]]:
        """Per query, (shard, row, score) tuples best first."""
        return [list(zip(s[:n], r[:n], v[:n])) for s, r, v, n in
                zip(self.shards.tolist(), self.rows.tolist(), self.scores.tolist(), self.counts.tolist())]


def exact_topk(
    shards: list[tuple[torch.Tensor, int, torch.Tensor | None]],
    queries: torch.Tensor,
    k: int,
    chunk_rows: int,
    max_score_elements: int = 0,
) -> list[list[tuple[int, int, float]]]:
    """``ranked_topk`` as lists: per query, (shard, row, score) best first."""
    return ranked_topk(shards, queries, k, chunk_rows, max_score_elements).as_lists()


def ranked_topk(
    shards: list[tuple[torch.Tensor, int, torch.Tensor | None]],
    queries: torch.Tensor,
    k: int,
    chunk_rows: int,
    max_score_elements: int = 0,
) -> Ranked:
    """Top-k over several shards ``(matrix, used_rows, mask)``, best first.

    ``queries`` is float32 on the CPU; each shard gets a copy on its device in its dtype. With
    several GPU shards, each is launched on a stream of its own, so shards on one device overlap
    as shards on different devices do. A GPU shard's candidates come back by one asynchronous
    copy into page-locked memory; the host waits once per shard, after everything is launched,
    instead of twice per shard in launch order.
    """
    step = step_rows(chunk_rows, queries.shape[0], max_score_elements)
    launched: list[tuple[int, _Pending]] = []
    # A lone GPU shard stays on the current stream: a side stream would only add a hand-off.
    side_streams = sum(1 for matrix, used, _ in shards if used and matrix.device.type == "cuda") > 1
    # Several shards' candidates are merged (and so sorted) on the host: only a lone shard's are
    # worth putting in order on its device.
    lone = sum(1 for _, used, _ in shards if used) == 1
    for index, (matrix, used_rows, mask) in enumerate(shards):
        if used_rows == 0:
            continue
        if matrix.device.type != "cuda":
            launched.append((index, _Pending.done(_search_shard(matrix, used_rows, queries, k, step, mask))))
            continue
        stream = torch.cuda.current_stream(matrix.device)
        if side_streams:
            side = _shard_stream(matrix.device, index)
            side.wait_stream(stream)  # the shard's writes come first
            stream = side
        with torch.cuda.stream(stream):
            hits = _search_shard(matrix, used_rows, queries, k, step, mask)
            ordered = lone and hits.scores.numel() >= SORT_ON_DEVICE
            if ordered:
                hits.scores, order = torch.sort(hits.scores, dim=1, descending=True)
                hits.rows = torch.gather(hits.rows, 1, order)
            launched.append((index, _Pending.copy_back(hits, stream, ordered)))
    if not launched:
        empty = np.zeros((queries.shape[0], 0), dtype=np.int64)
        return Ranked(empty.astype(np.float32), empty, empty, np.zeros(queries.shape[0], dtype=np.int64))
    per_shard = []
    for index, pending in launched:
        scores, rows = pending.wait()
        if pending.counts is not None and not complete(pending.counts, k):
            # The sampled threshold let fewer than k rows (or more than the lists hold) through:
            # this shard is searched again by the chunked path, so the result stays exact.
            matrix, used_rows, mask = shards[index]
            hits = shard_topk(matrix, used_rows, _queries_on(matrix, queries), k, step, mask)
            scores, rows = hits.scores.cpu(), hits.rows.cpu()
            pending.ordered = False
        per_shard.append((index, scores, rows))
    if len(per_shard) == 1:
        index, top, rows = per_shard[0]
        if not launched[0][1].ordered:
            top, picked = torch.topk(top, min(k, top.shape[1]), dim=1, sorted=True)
            rows = torch.gather(rows, 1, picked)
        rows = rows.numpy()
        shard_of = np.full(rows.shape, index, dtype=np.int64)
    else:
        # Key = shard << 40 | row: one int64 carries both through the merge.
        top, keys = merge_topk([(s, r | (i << 40)) for i, s, r in per_shard], k)
        keys = keys.numpy()
        shard_of, rows = keys >> 40, keys & ((1 << 40) - 1)
    top = top.numpy()
    # Sorted best first, so a query's masked rows (-inf) are its last entries.
    counts = np.count_nonzero(top != NEG_INF, axis=1)
    return Ranked(top, shard_of, rows, counts)


def _queries_on(matrix: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """The queries on the shard's device, in the dtype its scores are computed in."""
    compact = matrix.dtype in (torch.int8, torch.uint8)  # search/compact.py: scored in floating point
    dtype = matrix.dtype if not compact else (torch.float32 if matrix.device.type == "cpu" else torch.float16)
    return queries.to(device=matrix.device, dtype=dtype, non_blocking=True)


def _search_shard(matrix: torch.Tensor, used_rows: int, queries: torch.Tensor, k: int, step: int,
                  mask: torch.Tensor | None) -> ShardHits | ThresholdHits:
    q = _queries_on(matrix, queries)
    if fused_applies(matrix, k, queries.shape[0], used_rows):
        # The buffer holds one maximum per GROUP rows: GROUP times the rows per step.
        return grouped_shard_topk(matrix, used_rows, q, k, step * GROUP, mask, group_max_triton, rescore_triton)
    if threshold_applies(matrix, k, queries.shape[0], used_rows):
        return threshold_shard_topk(matrix, used_rows, q, k, mask, threshold_scan_triton)
    return shard_topk(matrix, used_rows, q, k, step, mask)


_STREAMS: dict[tuple[int, int], "torch.cuda.Stream"] = {}


def _shard_stream(device: torch.device, shard: int) -> "torch.cuda.Stream":
    """One stream per (device, shard index), made once: streams are cheap to keep, not to make."""
    key = (device.index if device.index is not None else torch.cuda.current_device(), shard)
    stream = _STREAMS.get(key)
    if stream is None:
        stream = _STREAMS[key] = torch.cuda.Stream(device)
    return stream


@dataclass
class _Pending:
    """A shard's candidates on their way to host memory (or already there, for CPU shards)."""

    scores: torch.Tensor
    rows: torch.Tensor
    event: "torch.cuda.Event | None" = None
    # Per query, the rows that reached a sampled threshold (search/threshold_scan.py), if it was used.
    counts: torch.Tensor | None = None
    # Whether each query's candidates are already best first.
    ordered: bool = False

    @classmethod
    def done(cls, hits: ShardHits) -> "_Pending":
        return cls(hits.scores, hits.rows)

    @classmethod
    def copy_back(cls, hits: ShardHits | ThresholdHits, stream: "torch.cuda.Stream", ordered: bool = False
                  ) -> "_Pending":
        parts = [hits.scores, hits.rows]
        if isinstance(hits, ThresholdHits):
            parts.append(hits.counts)
        copies = [torch.empty(p.shape, dtype=p.dtype, pin_memory=True) for p in parts]
        for copy, part in zip(copies, parts):
            copy.copy_(part, non_blocking=True)
        # The device tensors were made on this stream, so the allocator hands their memory out
        # again only to work queued behind these copies.
        event = torch.cuda.Event()
        event.record(stream)
        return cls(copies[0], copies[1], event, copies[2] if len(copies) > 2 else None, ordered)

    def wait(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.event is not None:
            self.event.synchronize()
        return self.scores, self.rows
