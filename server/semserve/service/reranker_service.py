"""RerankerService: a cross-encoder reads query and document together and scores relevance.

Pairs go through the model's dynamic batcher like texts do (same token budget, length sort,
back-pressure and deadlines); the activation (sigmoid, or a label's probability) is applied per
request after the batch, so raw and activated requests share batches.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor

import numpy as np
import torch

from semserve.config import RequestLimits
from semserve.registry import CROSS_ENCODER, HostedModel, ModelRegistry
from semserve.service.encoder_service import check_texts, flag
from semserve.service.errors import invalid_argument, unary_rpc
from semserve.service.inference import deadline_of, run_inference
from semserve.service.streaming import answer_by_id
from semserve_client.v1 import reranker_pb2, reranker_pb2_grpc


def checked_top_n(request: reranker_pb2.RerankRequest, count: int) -> int:
    """Unset returns every document; 1 or more returns that many (all of them when it exceeds the count)."""
    if not request.HasField("top_n"):
        return count
    if request.top_n < 1:
        raise invalid_argument(f"top_n must be at least 1 (or unset for all documents), got {request.top_n}")
    return min(request.top_n, count)


def pair_scores(model: HostedModel, logits: np.ndarray, raw: bool) -> np.ndarray:
    head = model.replicas[0]
    tensor = torch.from_numpy(logits)
    return (head.raw_scores(tensor) if raw else head.activate(tensor)).float().numpy()


class RerankerServicer(reranker_pb2_grpc.RerankerServiceServicer):
    def __init__(self, registry: ModelRegistry, limits: RequestLimits, tokenize_pool: Executor):
        self._registry = registry
        self._limits = limits
        self._pool = tokenize_pool

    async def score(
        self, model: HostedModel, query: str, documents: list[str], truncate: bool, raw: bool, deadline: float | None
    ):
        """One score per document, in input order, with the inference outcome (for timing)."""
        outcome = await run_inference(
            model, [(query, d) for d in documents], truncate, deadline, self._pool, what="pair"
        )
        return pair_scores(model, np.stack(outcome.values), raw), outcome

    async def rerank(self, request: reranker_pb2.RerankRequest, deadline: float | None) -> reranker_pb2.RerankResponse:
        started = time.monotonic()
        model = self._registry.get(request.model, CROSS_ENCODER)
        if not request.query.strip():
            raise invalid_argument("query is empty; send the text the documents are ranked against")
        documents = check_texts(request.documents, self._limits.max_documents_per_rerank, "documents")
        top_n = checked_top_n(request, len(documents))
        scores, outcome = await self.score(
            model, request.query, documents, flag(request, "truncate", True), request.raw_scores, deadline
        )
        # Stable sort: equal scores keep the documents' input order.
        order = np.argsort(-scores, kind="stable")[:top_n]
        results = [
            reranker_pb2.RerankResult(
                index=int(i), score=float(scores[i]), document=documents[i] if request.return_documents else ""
            )
            for i in order
        ]
        return reranker_pb2.RerankResponse(
            model=model.name, results=results, timing=outcome.timing.to_proto(time.monotonic() - started)
        )

    @unary_rpc
    async def Rerank(self, request, context):
        return await self.rerank(request, deadline_of(context))

    async def RerankStream(self, request_iterator, context):
        deadline = deadline_of(context)
        async for response in answer_by_id(
            request_iterator, lambda r: self.rerank(r, deadline), reranker_pb2.RerankStreamResponse
        ):
            yield response
