from semserve_client.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelStats(_message.Message):
    __slots__ = ("batches", "items", "tokens", "padded_tokens", "queued_items", "rejected_requests", "active_requests")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PADDED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    batches: int
    items: int
    tokens: int
    padded_tokens: int
    queued_items: int
    rejected_requests: int
    active_requests: int
    def __init__(self, batches: _Optional[int] = ..., items: _Optional[int] = ..., tokens: _Optional[int] = ..., padded_tokens: _Optional[int] = ..., queued_items: _Optional[int] = ..., rejected_requests: _Optional[int] = ..., active_requests: _Optional[int] = ...) -> None: ...

class BatchingInfo(_message.Message):
    __slots__ = ("policy", "max_batch_tokens", "max_batch_size", "measured_tokens_per_second", "calibration_seconds", "from_cache", "cuda_graph_batch_sizes")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    CUDA_GRAPH_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    policy: str
    max_batch_tokens: int
    max_batch_size: int
    measured_tokens_per_second: float
    calibration_seconds: float
    from_cache: bool
    cuda_graph_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, policy: _Optional[str] = ..., max_batch_tokens: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., measured_tokens_per_second: _Optional[float] = ..., calibration_seconds: _Optional[float] = ..., from_cache: _Optional[bool] = ..., cuda_graph_batch_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "dimension", "max_tokens", "devices", "dtype", "path", "is_default", "pooling", "stats", "batching", "quantization", "prompts", "default_prompt_name")
    class PromptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PROMPT_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: _common_pb2.ModelKind
    dimension: int
    max_tokens: int
    devices: _containers.RepeatedScalarFieldContainer[str]
    dtype: str
    path: str
    is_default: bool
    pooling: str
    stats: ModelStats
    batching: BatchingInfo
    quantization: QuantizationInfo
    prompts: _containers.ScalarMap[str, str]
    default_prompt_name: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ..., dimension: _Optional[int] = ..., max_tokens: _Optional[int] = ..., devices: _Optional[_Iterable[str]] = ..., dtype: _Optional[str] = ..., path: _Optional[str] = ..., is_default: _Optional[bool] = ..., pooling: _Optional[str] = ..., stats: _Optional[_Union[ModelStats, _Mapping]] = ..., batching: _Optional[_Union[BatchingInfo, _Mapping]] = ..., quantization: _Optional[_Union[QuantizationInfo, _Mapping]] = ..., prompts: _Optional[_Mapping[str, str]] = ..., default_prompt_name: _Optional[str] = ...) -> None: ...

class QuantizationInfo(_message.Message):
    __slots__ = ("source", "lower", "upper")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    source: str
    lower: _containers.RepeatedScalarFieldContainer[float]
    upper: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, source: _Optional[str] = ..., lower: _Optional[_Iterable[float]] = ..., upper: _Optional[_Iterable[float]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_texts_per_request", "max_documents_per_rerank", "max_queue_size", "max_queue_tokens", "max_receive_message_bytes", "max_send_message_bytes", "max_batch_tokens", "max_batch_size", "max_queue_delay_us", "max_top_k", "max_queries_per_search", "max_documents_per_upsert", "max_queue_time_ms", "max_dimension")
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENTS_PER_RERANK_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEND_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_QUERIES_PER_SEARCH_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENTS_PER_UPSERT_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    max_texts_per_request: int
    max_documents_per_rerank: int
    max_queue_size: int
    max_queue_tokens: int
    max_receive_message_bytes: int
    max_send_message_bytes: int
    max_batch_tokens: int
    max_batch_size: int
    max_queue_delay_us: int
    max_top_k: int
    max_queries_per_search: int
    max_documents_per_upsert: int
    max_queue_time_ms: int
    max_dimension: int
    def __init__(self, max_texts_per_request: _Optional[int] = ..., max_documents_per_rerank: _Optional[int] = ..., max_queue_size: _Optional[int] = ..., max_queue_tokens: _Optional[int] = ..., max_receive_message_bytes: _Optional[int] = ..., max_send_message_bytes: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_queue_delay_us: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_queries_per_search: _Optional[int] = ..., max_documents_per_upsert: _Optional[int] = ..., max_queue_time_ms: _Optional[int] = ..., max_dimension: _Optional[int] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FrontendInfo(_message.Message):
    __slots__ = ("index", "pid", "requests")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    pid: int
    requests: int
    def __init__(self, index: _Optional[int] = ..., pid: _Optional[int] = ..., requests: _Optional[int] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("version", "models", "limits", "frontends")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_FIELD_NUMBER: _ClassVar[int]
    version: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    limits: Limits
    frontends: _containers.RepeatedCompositeFieldContainer[FrontendInfo]
    def __init__(self, version: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., frontends: _Optional[_Iterable[_Union[FrontendInfo, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "path", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    kind: _common_pb2.ModelKind
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
