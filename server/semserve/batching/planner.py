"""Cutting queued items into batches.

Padding is the main waste of a padded batch: a batch costs items x longest item. Sorting a
window of the queue by length before cutting keeps similar lengths together; the window is
FIFO-bounded so long items are never starved by a stream of short ones.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

from semserve.batching.items import WorkItem

T = TypeVar("T", bound=WorkItem)


def padded_cost(items: Sequence[WorkItem]) -> int:
    return len(items) * max((i.tokens for i in items), default=0)


def split_sorted(items: Sequence[T], max_batch_tokens: int, max_batch_size: int) -> list[list[T]]:
    """Sort by length and cut greedily into batches whose padded cost fits the budget.

    An item longer than the whole budget still gets a batch of its own.
    """
    batches: list[list[T]] = []
    current: list[T] = []
    for item in sorted(items, key=lambda i: i.tokens):
        # Sorted ascending, so the newcomer is the longest: cost = (n + 1) * item.tokens.
        if current and (len(current) >= max_batch_size or (len(current) + 1) * item.tokens > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches
