from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EmbeddingFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMBEDDING_FORMAT_UNSPECIFIED: _ClassVar[EmbeddingFormat]
    EMBEDDING_FORMAT_FLOAT_LIST: _ClassVar[EmbeddingFormat]
    EMBEDDING_FORMAT_FLOAT32_BYTES: _ClassVar[EmbeddingFormat]
    EMBEDDING_FORMAT_FLOAT16_BYTES: _ClassVar[EmbeddingFormat]
    EMBEDDING_FORMAT_INT8_BYTES: _ClassVar[EmbeddingFormat]
    EMBEDDING_FORMAT_UINT8_BYTES: _ClassVar[EmbeddingFormat]
    EMBEDDING_FORMAT_BINARY_BYTES: _ClassVar[EmbeddingFormat]
    EMBEDDING_FORMAT_UBINARY_BYTES: _ClassVar[EmbeddingFormat]

class TruncationDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATION_DIRECTION_UNSPECIFIED: _ClassVar[TruncationDirection]
    TRUNCATION_DIRECTION_RIGHT: _ClassVar[TruncationDirection]
    TRUNCATION_DIRECTION_LEFT: _ClassVar[TruncationDirection]

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_ENCODER: _ClassVar[ModelKind]
    MODEL_KIND_CROSS_ENCODER: _ClassVar[ModelKind]
EMBEDDING_FORMAT_UNSPECIFIED: EmbeddingFormat
EMBEDDING_FORMAT_FLOAT_LIST: EmbeddingFormat
EMBEDDING_FORMAT_FLOAT32_BYTES: EmbeddingFormat
EMBEDDING_FORMAT_FLOAT16_BYTES: EmbeddingFormat
EMBEDDING_FORMAT_INT8_BYTES: EmbeddingFormat
EMBEDDING_FORMAT_UINT8_BYTES: EmbeddingFormat
EMBEDDING_FORMAT_BINARY_BYTES: EmbeddingFormat
EMBEDDING_FORMAT_UBINARY_BYTES: EmbeddingFormat
TRUNCATION_DIRECTION_UNSPECIFIED: TruncationDirection
TRUNCATION_DIRECTION_RIGHT: TruncationDirection
TRUNCATION_DIRECTION_LEFT: TruncationDirection
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_ENCODER: ModelKind
MODEL_KIND_CROSS_ENCODER: ModelKind

class Timing(_message.Message):
    __slots__ = ("queue_time_us", "tokenization_time_us", "inference_time_us", "total_time_us", "compute_tokens", "padded_tokens", "batches", "transport_time_us")
    QUEUE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    TOKENIZATION_TIME_US_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_US_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PADDED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    queue_time_us: int
    tokenization_time_us: int
    inference_time_us: int
    total_time_us: int
    compute_tokens: int
    padded_tokens: int
    batches: int
    transport_time_us: int
    def __init__(self, queue_time_us: _Optional[int] = ..., tokenization_time_us: _Optional[int] = ..., inference_time_us: _Optional[int] = ..., total_time_us: _Optional[int] = ..., compute_tokens: _Optional[int] = ..., padded_tokens: _Optional[int] = ..., batches: _Optional[int] = ..., transport_time_us: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "data")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    data: bytes
    def __init__(self, values: _Optional[_Iterable[float]] = ..., data: _Optional[bytes] = ...) -> None: ...
