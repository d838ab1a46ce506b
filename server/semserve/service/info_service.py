"""InfoService: what the server hosts and every limit it enforces."""

from __future__ import annotations

from semserve import __version__
from semserve.config import ServerConfig
from semserve.registry import ENCODER, HostedModel, ModelRegistry
from semserve_client.v1 import common_pb2, info_pb2, info_pb2_grpc

def model_kind_proto(kind: str) -> int:
    return common_pb2.MODEL_KIND_ENCODER if kind == ENCODER else common_pb2.MODEL_KIND_CROSS_ENCODER


def model_info(model: HostedModel, is_default: bool) -> info_pb2.ModelInfo:
    s = model.stats
    return info_pb2.ModelInfo(
        name=model.name,
        kind=model_kind_proto(model.kind),
        dimension=model.dimension,
        max_tokens=model.max_tokens,
        devices=model.devices,
        dtype=model.dtype,
        path=str(model.path),
        is_default=is_default,
        pooling=model.pooling,
        stats=info_pb2.ModelStats(
            batches=s.batches,
            items=s.items,
            tokens=s.tokens,
            padded_tokens=s.padded_tokens,
            queued_items=model.batcher.queued_items,
            rejected_requests=s.rejected_requests,
        ),
    )


def limits_proto(config: ServerConfig) -> info_pb2.Limits:
    b, l = config.batching, config.limits
    return info_pb2.Limits(
        max_texts_per_request=l.max_texts_per_request,
        max_documents_per_rerank=l.max_documents_per_rerank,
        max_queue_size=b.max_queue_size,
        max_queue_tokens=b.max_queue_tokens,
        max_receive_message_bytes=l.max_receive_message_bytes,
        max_send_message_bytes=l.max_send_message_bytes,
        max_batch_tokens=b.max_batch_tokens,
        max_batch_size=b.max_batch_size,
        max_queue_delay_us=b.max_queue_delay_us,
        max_top_k=l.max_top_k,
        max_queries_per_search=l.max_queries_per_search,
        max_documents_per_upsert=l.max_documents_per_upsert,
    )


class InfoServicer(info_pb2_grpc.InfoServiceServicer):
    def __init__(self, registry: ModelRegistry, config: ServerConfig):
        self._registry = registry
        self._config = config

    async def GetInfo(self, request, context):
        return info_pb2.GetInfoResponse(
            version=__version__,
            models=[model_info(m, self._registry.is_default(m)) for m in self._registry],
            limits=limits_proto(self._config),
        )
