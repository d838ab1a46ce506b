"""EncoderService: Embed, EmbedStream, Tokenize and Similarity; proto in, core calls, proto out."""

from __future__ import annotations

import asyncio
import time
from typing import Sequence

from semserve.config import RequestLimits
from semserve.core.types import ENCODER
from semserve.frontend import codec
from semserve.frontend.errors import invalid_argument, unary_rpc
from semserve.frontend.inference import Inference, deadline_of
from semserve.frontend.prompts import optional_string, prompted, resolve_prompt
from semserve.frontend.streaming import answer_by_id
from semserve.frontend.timing import timing_proto
from semserve_client.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

_EMBEDDINGS_FIELD = encoder_pb2.EmbedResponse.DESCRIPTOR.fields_by_name["embeddings"].number
_DIRECTIONS = {common_pb2.TRUNCATION_DIRECTION_UNSPECIFIED, common_pb2.TRUNCATION_DIRECTION_RIGHT,
               common_pb2.TRUNCATION_DIRECTION_LEFT}


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
    def __init__(self, inference: Inference, limits: RequestLimits):
        self._inference = inference
        self._limits = limits

    async def embed(self, request: encoder_pb2.EmbedRequest, deadline: float | None) -> encoder_pb2.EmbedResponse:
        started = time.monotonic()
        texts = check_texts(request.texts, self._limits.max_texts_per_request)
        fmt = codec.checked_format(request.format)
        if request.truncation_direction not in _DIRECTIONS:
            raise invalid_argument(f"unknown truncation_direction {request.truncation_direction}; use "
                                   "TRUNCATION_DIRECTION_RIGHT or TRUNCATION_DIRECTION_LEFT")
        out = await self._inference.embed(
            request.model, texts, flag(request, "truncate", True), flag(request, "normalize", True), deadline,
            dimensions=request.dimensions if request.HasField("dimensions") else None,
            truncate_left=request.truncation_direction == common_pb2.TRUNCATION_DIRECTION_LEFT,
            prompt_name=optional_string(request, "prompt_name"), prompt=optional_string(request, "prompt"),
        )
        response = encoder_pb2.EmbedResponse(
            model=out.model.name,
            dimension=out.values.shape[1],
            format=fmt,
            token_counts=out.tokenized.lengths,
            truncated_indexes=out.tokenized.truncated,
            timing=timing_proto(out.timing, time.monotonic() - started),
        )
        response.MergeFromString(
            codec.serialized_embeddings(out.values, fmt, _EMBEDDINGS_FIELD, out.model.quantization))
        return response

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
        model, tokenizer = await self._inference.models.get(request.model, ENCODER)
        texts = check_texts(request.texts, self._limits.max_texts_per_request)
        texts = prompted(texts, resolve_prompt(model, optional_string(request, "prompt_name"),
                                               optional_string(request, "prompt")))
        described = await asyncio.get_running_loop().run_in_executor(
            None, tokenizer.describe, texts, flag(request, "truncate", True)
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
        texts = check_texts(request.texts, self._limits.max_texts_per_request - 1)
        out = await self._inference.embed(
            request.model, [request.source_text, *texts], flag(request, "truncate", True), True, deadline_of(context)
        )
        scores = out.values[1:] @ out.values[0]
        return encoder_pb2.SimilarityResponse(
            model=out.model.name, scores=scores.tolist(), timing=timing_proto(out.timing, time.monotonic() - started)
        )
