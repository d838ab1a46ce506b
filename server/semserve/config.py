"""Server configuration: one frozen object built from flags, environment variables and defaults.

Every limit lives here so that the Info RPC can report exactly what the service layer
enforces; option names follow Triton's dynamic batcher where operators already know them
(max_queue_delay, max_queue_size, preferred batch bounds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A setting that cannot work; raised before anything is loaded."""


@dataclass(frozen=True)
class BatchingConfig:
    """How the dynamic batcher groups queued items into forward passes."""

    # Padded size of one batch: items x longest item, in tokens.
    max_batch_tokens: int = 16384
    # Items (texts or pairs) in one batch.
    max_batch_size: int = 256
    # How long the oldest queued item waits for companions before its batch goes anyway.
    max_queue_delay_us: int = 2000
    # Items that may wait in one model's queue; beyond it requests get RESOURCE_EXHAUSTED.
    max_queue_size: int = 8192
    # Tokens that may wait in one model's queue.
    max_queue_tokens: int = 2_000_000
    # A request whose estimated wait (queued tokens / the model's measured tokens per second)
    # exceeds this is refused at once with RESOURCE_EXHAUSTED (Triton's queue policy timeout is
    # the precedent); 0 turns it off. Needs a measurement: with the fixed policy only the bounds
    # above apply.
    max_queue_time_ms: float = 2000.0
    # Batches a worker holds at once: one computing, the next being prepared (padding,
    # host-to-device copy) meanwhile; on a GPU one more, queued on the device behind the one
    # computing (engine/runtime/worker.py).
    worker_pipeline_depth: int = 2
    # "measured": at start (and on LoadModel) each model is timed on its devices and the batch
    # budget and size cap are chosen from the measurement (engine/runtime/calibration.py);
    # "fixed": the values above as they are.
    policy: str = "measured"
    # Time the measurement may take per model and device (a cached measurement takes none).
    calibration_seconds: float = 5.0
    # Fields given explicitly (flags, variables): the measurement never overrides them.
    explicit: frozenset[str] = frozenset()

    def validate(self) -> None:
        for name in ("max_batch_tokens", "max_batch_size", "max_queue_size", "max_queue_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_time_ms < 0:
            raise ConfigError(f"max_queue_time_ms must be >= 0, got {self.max_queue_time_ms}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.worker_pipeline_depth < 1:
            raise ConfigError("worker_pipeline_depth must be >= 1")
        if self.policy not in ("measured", "fixed"):
            raise ConfigError(f"batch policy must be measured or fixed, got {self.policy!r}")
        if self.calibration_seconds <= 0:
            raise ConfigError(f"calibration_seconds must be > 0, got {self.calibration_seconds}")


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on a single request, enforced by the service layer with precise statuses."""

    max_texts_per_request: int = 1024
    max_documents_per_rerank: int = 1024
    max_top_k: int = 1000
    max_queries_per_search: int = 1024
    max_documents_per_upsert: int = 4096
    # Largest embedding dimension of a collection (a dimension is memory per document).
    max_dimension: int = 8192
    # gRPC message size bounds; larger messages are refused by gRPC with RESOURCE_EXHAUSTED.
    max_receive_message_bytes: int = 64 * 1024 * 1024
    max_send_message_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class SearchConfig:
    """Where and how the searcher keeps collections (see docs/architecture.md, "Search")."""

    # Folder of the write-ahead logs and snapshots; None keeps collections in memory only
    # (nothing survives a restart).
    data_dir: Path | None = None
    # "auto" (the model devices), "cpu", "cuda", or a list such as "cuda:0,cuda:1".
    devices: str = "auto"
    # Shards per device: several CPU shards spread scoring over cores; one per GPU is enough.
    shards_per_device: int = 1
    # Storage type of the embedding shards: "auto" is float16 on GPU and float32 on CPU.
    dtype: str = "auto"
    # Rows one scoring step covers for a large query batch; the score buffer is queries x rows.
    chunk_rows: int = 65536
    # Few queries may take bigger steps, up to this many scores per step (fewer kernel launches).
    max_score_elements: int = 1 << 24
    # Rows preallocated per shard when a collection is created; capacity doubles when full.
    initial_capacity: int = 64
    # Fraction of deleted rows in a shard above which it is compacted in the background.
    compaction_threshold: float = 0.25
    # How often the background task looks for shards to compact.
    maintenance_interval_s: float = 1.0
    # Threads for blocking search work: commits, reads of the collection files, scoring, compaction.
    threads: int = 4

    def validate(self) -> None:
        for name in ("shards_per_device", "chunk_rows", "initial_capacity", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"search {name} must be >= 1, got {getattr(self, name)}")
        if self.max_score_elements < 0:
            raise ConfigError("search max_score_elements must be >= 0")
        if not 0.0 < self.compaction_threshold <= 1.0:
            raise ConfigError(f"search compaction_threshold must be in (0, 1], got {self.compaction_threshold}")
        if self.maintenance_interval_s <= 0:
            raise ConfigError("search maintenance_interval_s must be > 0")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"unknown search dtype {self.dtype!r}: use auto, float32, float16 or bfloat16")


@dataclass(frozen=True)
class ModelSpec:
    """A model folder to load at start, under the name requests will use."""

    name: str
    path: Path
    kind: str  # "encoder" or "cross_encoder"
    # Encoders: the prompt applied when a request names none (overrides the folder's own).
    default_prompt_name: str | None = None

    @staticmethod
    def parse(value: str, kind: str) -> "ModelSpec":
        """Parse ``NAME=DIR`` or ``DIR`` (the name is then the folder's base name)."""
        name, sep, path = value.partition("=")
        if not sep:
            path, name = value, ""
        path = path.strip()
        if not path:
            raise ConfigError(f"empty model folder in {value!r}")
        p = Path(path).expanduser()
        return ModelSpec(name=name.strip() or p.resolve().name, path=p, kind=kind)


ROLES = ("read", "write", "admin")


@dataclass(frozen=True)
class SecurityConfig:
    """TLS on the gRPC port, API keys with roles, and the folder LoadModel may load from."""

    # PEM files; the certificate and key are re-read when they change (and on SIGHUP).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Given: clients must present a certificate signed by this CA (mTLS).
    tls_client_ca: Path | None = None
    # Lines of "ROLE SHA256-HEX [LABEL]" (see frontend/auth.py); re-read when it changes.
    api_keys_file: Path | None = None
    # One admin key given on the command line (the earlier --admin-token), beside the file.
    admin_token: str | None = None
    # gRPC server reflection (behind the read role when keys are on).
    reflection: bool = True
    # LoadModel loads only folders under this one; None refuses every LoadModel.
    model_root: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def keys(self) -> bool:
        return self.api_keys_file is not None or bool(self.admin_token)

    def validate(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS with client certificates)")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "api_keys_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"--{name.replace('_', '-')} {path}: no such file")
        if self.model_root is not None and not Path(self.model_root).is_dir():
            raise ConfigError(f"--model-root {self.model_root}: no such folder")


ENGINE_LAYOUTS = ("auto", "one", "per-device")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    encoders: tuple[ModelSpec, ...] = ()
    rerankers: tuple[ModelSpec, ...] = ()
    # "auto" (every GPU if any, else CPU), "cpu", "cuda", or a list such as "cuda:0,cuda:1".
    device: str = "auto"
    # "one": one engine process drives every device (a worker per device); "per-device": an engine
    # process per device named, front ends spreading calls over them; "auto": per-device where
    # two or more distinct GPUs are named, else one (process/engines.py).
    engines: str = "auto"
    # Whether this engine process holds the collection store: every engine but the first of a
    # per-device server leaves it to that one, the store's only writer.
    holds_collections: bool = True
    # "auto" is float16 on GPU and float32 on CPU.
    dtype: str = "auto"
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: RequestLimits = field(default_factory=RequestLimits)
    # Seconds calls in flight get to finish after SIGTERM.
    grace_period_s: float = 20.0
    # Prometheus /metrics over HTTP; 0 disables it. The host defaults to ``host``.
    metrics_port: int = 0
    metrics_host: str | None = None
    # Threads that tokenize requests (fast tokenizers release the GIL).
    tokenizer_threads: int = 2
    # A front end's concurrent calls of one model travel to the engine as one call, none held
    # past max_queue_delay (frontend/merging.py); off: every call on its own.
    merge_engine_calls: bool = True
    # Concurrent RPCs gRPC accepts before answering RESOURCE_EXHAUSTED itself.
    max_concurrent_rpcs: int = 10000
    log_level: str = "INFO"
    # On GPUs, replay captured CUDA graphs per (batch, length) bucket instead of launching every
    # kernel from Python (measured on an H100: +27% MiniLM throughput, lone-request p50 6.8 -> 2.2 ms).
    cuda_graphs: bool = True
    # On GPUs, run BERT models on a batch's real tokens only, in one flat sequence with
    # variable-length attention, instead of padded (engine/runtime/packing.py).
    unpadded: bool = True
    security: SecurityConfig = field(default_factory=SecurityConfig)
    # OpenTelemetry spans of each request: "off", or "otlp" (frontend/tracing.py).
    tracing: str = "off"
    search: SearchConfig = field(default_factory=SearchConfig)

    def validate(self) -> None:
        self.batching.validate()
        self.search.validate()
        self.security.validate()
        if self.tracing not in ("off", "otlp"):
            raise ConfigError(f"tracing must be off or otlp, got {self.tracing!r}")
        if self.engines not in ENGINE_LAYOUTS:
            raise ConfigError(f"engines must be one of {', '.join(ENGINE_LAYOUTS)}, got {self.engines!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.limits.max_texts_per_request > self.batching.max_queue_size:
            raise ConfigError(
                f"max_texts_per_request ({self.limits.max_texts_per_request}) must not exceed "
                f"max_queue_size ({self.batching.max_queue_size}): such a request could never be queued"
            )
        if self.limits.max_documents_per_rerank > self.batching.max_queue_size:
            raise ConfigError(
                f"max_documents_per_rerank ({self.limits.max_documents_per_rerank}) must not exceed "
                f"max_queue_size ({self.batching.max_queue_size})"
            )
        names = [m.name for m in (*self.encoders, *self.rerankers)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"model names must be unique; repeated: {', '.join(dupes)} (use NAME=DIR)")
        if self.tokenizer_threads < 1:
            raise ConfigError("tokenizer_threads must be >= 1")
