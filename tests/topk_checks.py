"""Checks shared by the search selection tests: a brute-force top k, the same set of rows and
scores, and a GPU path's hits against a float32 brute force over the same fp16 values."""

from __future__ import annotations

import torch


def brute_force(matrix, used, queries, k, mask=None):
    scores = queries @ matrix[:used].T
    if mask is not None:
        scores = scores.masked_fill(~mask[:used], float("-inf"))
    return torch.topk(scores, min(k, used), dim=1)


def assert_same_top(scores, rows, reference):
    """Per query, the same rows as the reference's finite ones, with the same scores."""
    expected_scores, expected_rows = reference
    for got_rows, got_scores, want_rows, want_scores in zip(rows, scores, expected_rows, expected_scores):
        finite = want_scores > float("-inf")
        assert set(got_rows[got_scores > float("-inf")].tolist()) == set(want_rows[finite].tolist())
        torch.testing.assert_close(got_scores.sort(descending=True).values[: int(finite.sum())],
                                   want_scores[finite], rtol=1e-5, atol=1e-5)


def assert_matches_float32_brute_force(hits, matrix, mask, queries, k, tie=2e-3):
    """``hits`` (exact_topk's lists) against a float32 brute force over the same fp16 values: a
    row may be swapped only for one whose score ties with the k-th within fp16 rounding, and
    every returned row is live."""
    exact = (queries.cuda() @ matrix.float().T).masked_fill(~mask, float("-inf"))
    want_scores, want_rows = torch.topk(exact, k, dim=1)
    exact = exact.cpu()
    for query, (got, scores, wanted) in enumerate(zip(hits, want_scores.cpu(), want_rows.cpu())):
        assert len(got) == k
        got_rows = {row for _, row, _ in got}
        kth = float(scores[-1])
        for row, score in zip(wanted.tolist(), scores.tolist()):
            if row not in got_rows:
                assert abs(kth - score) <= tie
        for row in got_rows:
            assert bool(mask[row]) and float(exact[query, row]) >= kth - tie
