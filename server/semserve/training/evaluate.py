"""How well a model ties each term to its synonym, and whether unrelated terms stay apart.

Three numbers matter for a synonym dictionary:

* recall@1: does the nearest synonym in the whole file belong to the term (and the reverse)?
  That is what retrieval will actually do with the model.
* mean cosine of the pairs: how close the synonyms are.
* mean cosine of random non-synonym pairs: contrastive training can "succeed" by pulling
  everything together; synonym cosine only means something next to this baseline.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from semserve.models.encoder import Encoder
from semserve.training.embedding import embed
from semserve.training.pairs import Pair, synonym_groups, term_key


@dataclass(frozen=True)
class PairMetrics:
    pairs: int
    recall_at_1_term_to_synonym: float
    recall_at_1_synonym_to_term: float
    mean_synonym_cosine: float
    mean_random_cosine: float | None
    # One cosine per input pair, in file order.
    cosines: tuple[float, ...]

    @property
    def recall_at_1(self) -> float:
        """Both directions averaged: the single number to compare models by."""
        return (self.recall_at_1_term_to_synonym + self.recall_at_1_synonym_to_term) / 2

    @property
    def separation(self) -> float | None:
        """Mean synonym cosine minus mean random-pair cosine."""
        if self.mean_random_cosine is None:
            return None
        return self.mean_synonym_cosine - self.mean_random_cosine

    def summary(self) -> dict[str, float | int | None]:
        data = asdict(self)
        del data["cosines"]
        data["recall_at_1"] = self.recall_at_1
        data["separation"] = self.separation
        return data


def _recall_at_1(query_vecs: torch.Tensor, query_groups: list[int], cand_vecs: torch.Tensor, cand_groups: list[int]) -> float:
    """Share of queries whose most similar candidate is in their synonym group."""
    best = (query_vecs @ cand_vecs.T).argmax(dim=1).tolist()
    hits = sum(cand_groups[b] == g for b, g in zip(best, query_groups))
    return hits / len(query_groups)


def random_negatives(groups: list[int], seed: int) -> list[tuple[int, int]]:
    """(i, j) index pairs: pair i's term against the synonym of a random pair j of another group.

    Seeded so that the baseline and the tuned model are compared on the same random pairs.
    """
    rng = random.Random(seed)
    by_group: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    if len(by_group) < 2:
        return []
    negatives = []
    for i, group in enumerate(groups):
        while True:
            j = rng.randrange(len(groups))
            if groups[j] != group:
                break
        negatives.append((i, j))
    return negatives


def evaluate_pairs(encoder: Encoder, pairs: list[Pair], seed: int = 0, batch_size: int = 64) -> PairMetrics:
    """Score ``encoder`` on ``pairs``.

    Texts are embedded once each (by their case- and space-insensitive key), so a term that appears
    in several pairs is one query, and retrieval searches the distinct synonyms of the file. A hit
    is any candidate from the query's synonym group: with A-B and B-C in the file, C is a correct
    answer for A.
    """
    if not pairs:
        raise ValueError("no pairs to evaluate")
    groups = synonym_groups(pairs)
    texts: dict[str, str] = {}
    group_of: dict[str, int] = {}
    for pair, group in zip(pairs, groups):
        for text in (pair.term, pair.synonym):
            key = term_key(text)
            texts.setdefault(key, text)
            group_of[key] = group
    keys = list(texts)
    vectors = embed(encoder, [texts[k] for k in keys], batch_size=batch_size)
    row = {key: index for index, key in enumerate(keys)}

    term_keys = list(dict.fromkeys(term_key(p.term) for p in pairs))
    synonym_keys = list(dict.fromkeys(term_key(p.synonym) for p in pairs))
    term_vecs = vectors[[row[k] for k in term_keys]]
    synonym_vecs = vectors[[row[k] for k in synonym_keys]]
    term_groups = [group_of[k] for k in term_keys]
    synonym_groups_ = [group_of[k] for k in synonym_keys]

    a = vectors[[row[term_key(p.term)] for p in pairs]]
    b = vectors[[row[term_key(p.synonym)] for p in pairs]]
    cosines = (a * b).sum(dim=1)
    negatives = random_negatives(groups, seed)
    random_cosine = None
    if negatives:
        i, j = zip(*negatives)
        random_cosine = float((a[list(i)] * b[list(j)]).sum(dim=1).mean())

    return PairMetrics(
        pairs=len(pairs),
        recall_at_1_term_to_synonym=_recall_at_1(term_vecs, term_groups, synonym_vecs, synonym_groups_),
        recall_at_1_synonym_to_term=_recall_at_1(synonym_vecs, synonym_groups_, term_vecs, term_groups),
        mean_synonym_cosine=float(cosines.mean()),
        mean_random_cosine=random_cosine,
        cosines=tuple(cosines.tolist()),
    )
