"""InfoService: what the server hosts, every limit it enforces, and its front-end processes."""

from __future__ import annotations

from semserve import __version__
from semserve.config import ServerConfig
from semserve.core.api import Core
from semserve.core.types import ENCODER, ModelDescriptor
from semserve.frontend.auth import Authorizer
from semserve.frontend.errors import unary_rpc
from semserve_client.v1 import common_pb2, info_pb2, info_pb2_grpc


def model_kind_proto(kind: str) -> int:
    return common_pb2.MODEL_KIND_ENCODER if kind == ENCODER else common_pb2.MODEL_KIND_CROSS_ENCODER


def model_info(model: ModelDescriptor, with_path: bool = True) -> info_pb2.ModelInfo:
    """``with_path`` only for admins: a folder path tells a caller about the server's filesystem."""
    info = info_pb2.ModelInfo(
        name=model.name,
        kind=model_kind_proto(model.kind),
        dimension=model.dimension,
        max_tokens=model.max_tokens,
        devices=model.devices,
        dtype=model.dtype,
        path=model.path if with_path else "",
        is_default=model.is_default,
        pooling=model.pooling,
    )
    info.prompts.update(model.prompts)
    info.default_prompt_name = model.default_prompt_name or ""
    q = model.quantization
    if q is not None:
        info.quantization.CopyFrom(info_pb2.QuantizationInfo(source=q.source, lower=q.lower, upper=q.upper))
    b = model.batching
    if b is not None:
        info.batching.CopyFrom(info_pb2.BatchingInfo(
            policy=b.policy, max_batch_tokens=b.max_batch_tokens, max_batch_size=b.max_batch_size,
            measured_tokens_per_second=b.tokens_per_s, calibration_seconds=b.calibration_s, from_cache=b.from_cache,
            cuda_graph_batch_sizes=b.graph_batch_sizes,
        ))
    c = model.counters
    if c is not None:
        info.stats.CopyFrom(info_pb2.ModelStats(
            batches=c.batches, items=c.items, tokens=c.tokens, padded_tokens=c.padded_tokens,
            queued_items=c.queued_items, rejected_requests=c.rejected_requests,
            active_requests=c.active_requests,
        ))
    return info


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
        max_queue_time_ms=round(b.max_queue_time_ms),
        max_dimension=l.max_dimension,
    )


class InfoServicer(info_pb2_grpc.InfoServiceServicer):
    def __init__(self, core: Core, config: ServerConfig, authorizer: Authorizer):
        self._core = core
        self._config = config
        self._authorizer = authorizer

    @unary_rpc
    async def GetInfo(self, request, context):
        info = await self._core.info()
        admin = self._authorizer.is_admin(context.invocation_metadata())
        return info_pb2.GetInfoResponse(
            version=__version__,
            models=[model_info(m, with_path=admin) for m in info.models],
            limits=limits_proto(self._config),
            frontends=[info_pb2.FrontendInfo(index=f.index, pid=f.pid, requests=f.requests) for f in info.frontends],
        )
