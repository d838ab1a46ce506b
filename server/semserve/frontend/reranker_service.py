"""RerankerService: a cross-encoder reads query and document together and scores relevance.

Pairs go through the model's dynamic batcher in the engine like texts do (same token budget,
length sort, back-pressure and deadlines); the engine applies the activation (sigmoid, or a
label's probability) per request after the batch, so raw and activated requests share batches.
"""

from __future__ import annotations

import time

import numpy as np

from semserve.config import RequestLimits
from semserve.frontend.encoder_service import check_texts, flag
from semserve.frontend.errors import invalid_argument, unary_rpc
from semserve.frontend.inference import Inference, deadline_of
from semserve.frontend.streaming import answer_by_id
from semserve.frontend.timing import timing_proto
from semserve_client.v1 import reranker_pb2, reranker_pb2_grpc


def checked_top_n(request: reranker_pb2.RerankRequest, count: int) -> int:
    """Unset returns every document; 1 or more returns that many (all of them when it exceeds the count)."""
    if not request.HasField("top_n"):
        return count
    if request.top_n < 1:
        raise invalid_argument(f"top_n must be at least 1 (or unset for all documents), got {request.top_n}")
    return min(request.top_n, count)


class RerankerServicer(reranker_pb2_grpc.RerankerServiceServicer):
    def __init__(self, inference: Inference, limits: RequestLimits):
        self._inference = inference
        self._limits = limits

    async def rerank(self, request: reranker_pb2.RerankRequest, deadline: float | None) -> reranker_pb2.RerankResponse:
        started = time.monotonic()
        if not request.query.strip():
            raise invalid_argument("query is empty; send the text the documents are ranked against")
        documents = check_texts(request.documents, self._limits.max_documents_per_rerank, "documents")
        top_n = checked_top_n(request, len(documents))
        out = await self._inference.score(
            request.model, request.query, documents, flag(request, "truncate", True), request.raw_scores, deadline
        )
        scores = out.values
        # Stable sort: equal scores keep the documents' input order.
        order = np.argsort(-scores, kind="stable")[:top_n]
        results = [
            reranker_pb2.RerankResult(
                index=int(i), score=float(scores[i]), document=documents[i] if request.return_documents else ""
            )
            for i in order
        ]
        return reranker_pb2.RerankResponse(
            model=out.model.name, results=results, timing=timing_proto(out.timing, time.monotonic() - started)
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
