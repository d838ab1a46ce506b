"""The contrastive objective: in-batch negatives, scored in both directions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symmetric_infonce(terms: Tensor, synonyms: Tensor, scale: float = 20.0) -> Tensor:
    """Mean of term->synonym and synonym->term cross-entropy over scaled cosine similarities.

    This is MultipleNegativesRankingLoss made symmetric. Pairs in a dictionary have no direction
    ("SUV" is looked up by "越野车" as often as the reverse), so both sides are trained as queries.
    ``scale`` is 1/temperature: cosines live in [-1, 1], and without it the softmax is nearly
    uniform and the gradient weak.
    """
    a = F.normalize(terms.float(), dim=-1)
    b = F.normalize(synonyms.float(), dim=-1)
    scores = a @ b.T * scale
    labels = torch.arange(len(scores), device=scores.device)
    return (F.cross_entropy(scores, labels) + F.cross_entropy(scores.T, labels)) / 2
