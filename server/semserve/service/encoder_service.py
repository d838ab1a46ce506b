"""EncoderService: Embed, EmbedStream, Tokenize and Similarity over the encoder batchers."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Sequence

import numpy as np

from semserve.config import RequestLimits
from semserve.registry import ENCODER, HostedModel, ModelRegistry
from semserve.service import codec
from semserve.service.errors import invalid_argument, unary_rpc
from semserve.service.inference import deadline_of, run_inference
from semserve.service.streaming import answer_by_id
from semserve_client.v1 import encoder_pb2, encoder_pb2_grpc


def flag(message, field: str, default: bool) -> bool:
    """Value of an ``optional bool`` field, with the documented default when unset."""
    return getattr(message, field) if message.HasField(field) else default


def check_texts(texts: Sequence[str], limit: int, what: str = "texts") -> list[str]:
    if not texts:
        raise invalid_argument(f"no {what} given; send at least one")
    if len(texts) > limit:
        raise invalid_argument(
            f"{len(texts)} {what} in one request; at most {limit} are accepted (split the request)"
        )
    return list(texts)


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    def __init__(self, registry: ModelRegistry, limits: RequestLimits, tokenize_pool: Executor):
        self._registry = registry
        self._limits = limits
        self._pool = tokenize_pool

    async def embed_matrix(
        self, model: HostedModel, texts: list[str], truncate: bool, normalize: bool, deadline: float | None
    ):
        """Embeddings of texts as a float32 matrix, with the outcome (tokens, timing)."""
        outcome = await run_inference(model, texts, truncate, deadline, self._pool)
        matrix = np.stack(outcome.values).astype(np.float32, copy=False)
        if normalize:
            matrix = codec.l2_normalize(matrix)
        return matrix, outcome

    async def embed(self, request: encoder_pb2.EmbedRequest, deadline: float | None) -> encoder_pb2.EmbedResponse:
        started = time.monotonic()
        model = self._registry.get(request.model, ENCODER)
        texts = check_texts(request.texts, self._limits.max_texts_per_request)
        fmt = codec.checked_format(request.format)
        matrix, outcome = await self.embed_matrix(
            model, texts, flag(request, "truncate", True), flag(request, "normalize", True), deadline
        )
        return encoder_pb2.EmbedResponse(
            model=model.name,
            dimension=matrix.shape[1],
            format=fmt,
            embeddings=codec.to_messages(matrix, fmt),
            token_counts=[e.length for e in outcome.encoded],
            truncated_indexes=[i for i, e in enumerate(outcome.encoded) if e.truncated],
            timing=outcome.timing.to_proto(time.monotonic() - started),
        )

    @unary_rpc
    async def Embed(self, request, context):
        return await self.embed(request, deadline_of(context))

    async def EmbedStream(self, request_iterator, context):
        deadline = deadline_of(context)
        async for response in answer_by_id(
            request_iterator, lambda r: self.embed(r, deadline), encoder_pb2.EmbedStreamResponse
        ):
            yield response

    @unary_rpc
    async def Tokenize(self, request, context):
        model = self._registry.get(request.model, ENCODER)
        texts = check_texts(request.texts, self._limits.max_texts_per_request)
        described = await asyncio.get_running_loop().run_in_executor(
            self._pool, model.tokenizer.describe, texts, flag(request, "truncate", True)
        )
        out = []
        for encoding, full_length in described:
            tokens = [
                encoder_pb2.Token(id=i, piece=p, start=s, end=e, special=bool(m))
                for i, p, (s, e), m in zip(
                    encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask
                )
            ]
            out.append(
                encoder_pb2.TokenizedText(
                    tokens=tokens, full_token_count=full_length, over_limit=full_length > model.max_tokens
                )
            )
        return encoder_pb2.TokenizeResponse(model=model.name, max_tokens=model.max_tokens, texts=out)

    @unary_rpc
    async def Similarity(self, request, context):
        started = time.monotonic()
        model = self._registry.get(request.model, ENCODER)
        texts = check_texts(request.texts, self._limits.max_texts_per_request - 1)
        matrix, outcome = await self.embed_matrix(
            model, [request.source_text, *texts], flag(request, "truncate", True), True, deadline_of(context)
        )
        scores = matrix[1:] @ matrix[0]
        return encoder_pb2.SimilarityResponse(
            model=model.name, scores=scores.tolist(), timing=outcome.timing.to_proto(time.monotonic() - started)
        )
