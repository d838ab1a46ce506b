"""Contrastive batches in which no two pairs are synonyms of each other.

With in-batch negatives every other pair's synonym counts as wrong. If "SUV ↔ 越野车" and
"SUV ↔ off-road vehicle" share a batch, the loss pushes "SUV" away from a true synonym; the same
happens one step removed (A-B and B-C). So each batch takes at most one pair per synonym group.
"""

from __future__ import annotations

import random


def group_batches(groups: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle pair indices into batches of up to ``batch_size`` with distinct groups.

    Greedy first fit over a shuffled order: a pair goes into the first open batch that lacks its
    group. Batches only come out short when one group holds more pairs than there are batches to
    spread them over, and the order of the batches is shuffled so the short ones do not all land
    at the end of an epoch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    order = list(range(len(groups)))
    rng.shuffle(order)
    full: list[list[int]] = []
    open_batches: list[tuple[list[int], set[int]]] = []
    for index in order:
        group = groups[index]
        for members, seen in open_batches:
            if group not in seen:
                break
        else:
            members, seen = [], set()
            open_batches.append((members, seen))
        members.append(index)
        seen.add(group)
        if len(members) == batch_size:
            full.append(members)
            open_batches = [(m, s) for m, s in open_batches if m is not members]
    batches = full + [members for members, _ in open_batches]
    rng.shuffle(batches)
    return batches
