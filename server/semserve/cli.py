"""`semserve serve`: every flag also reads an environment variable (SEMSERVE_<FLAG>), so the
same image runs on a laptop and in Kubernetes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Sequence

from pathlib import Path

from semserve.config import (
    ROLES, BatchingConfig, ConfigError, ModelSpec, RequestLimits, SearchConfig, SecurityConfig, ServerConfig,
)


def _env(name: str, default):
    value = os.environ.get("SEMSERVE_" + name.upper().replace("-", "_"))
    if value is None:
        return default
    return type(default)(value) if default is not None and not isinstance(default, bool) else value


def _env_list(name: str) -> list[str]:
    value = os.environ.get("SEMSERVE_" + name)
    return [v for v in (value or "").split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semserve", description="gRPC inference server for retrieval")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve models over gRPC", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b, l = BatchingConfig(), RequestLimits()
    s.add_argument("--host", default=_env("host", "127.0.0.1"),
                   help="address to bind; 0.0.0.0 for every interface (containers) (SEMSERVE_HOST)")
    s.add_argument("--port", type=int, default=_env("port", 50051), help="port; 0 picks a free one (SEMSERVE_PORT)")
    s.add_argument(
        "--encoder", action="append", default=None, metavar="[NAME=]DIR",
        help="bi-encoder folder, repeatable; the first is the default (SEMSERVE_ENCODERS, comma-separated); "
        "without any, the bundled all-MiniLM-L6-v2",
    )
    s.add_argument(
        "--default-prompt-name", action="append", default=None, metavar="[MODEL=]PROMPT",
        help="prompt (from the model folder's prompts) applied when a request names none, repeatable; "
        "without MODEL=, the default encoder's (SEMSERVE_DEFAULT_PROMPT_NAMES, comma-separated)",
    )
    s.add_argument(
        "--reranker", action="append", default=None, metavar="[NAME=]DIR",
        help="cross-encoder folder, repeatable (SEMSERVE_RERANKERS)",
    )
    s.add_argument("--frontends", default=_env("frontends", "auto"),
                   help="gRPC front-end processes feeding one engine process (SO_REUSEPORT on one port): a number, "
                   "0 for a single process, or auto (GPU hosts: cores - 2, at most 16 per GPU; CPU-only hosts: 0) (SEMSERVE_FRONTENDS)")
    s.add_argument("--device", default=_env("device", "auto"), help="auto, cpu, cuda, or cuda:0,cuda:1 (SEMSERVE_DEVICE)")
    s.add_argument("--engines", choices=("auto", "one", "per-device"), default=_env("engines", "auto"),
                   help="one: one engine process drives every device; per-device: an engine process per device, "
                   "the front ends spreading model calls over them, collections in the first (needs front-end "
                   "processes; engine i serves its /metrics on --metrics-port + i); auto: per-device where two "
                   "or more GPUs are named and front ends run, else one (SEMSERVE_ENGINES)")
    s.add_argument("--dtype", default=_env("dtype", "auto"), help="auto, float32, float16, bfloat16 (SEMSERVE_DTYPE)")
    s.add_argument("--batch-policy", choices=("measured", "fixed"), default=_env("batch_policy", b.policy),
                   help="measured: time each model on its devices at load and choose the batch budget and size "
                   "cap from it (cached in the data dir); fixed: use --max-batch-tokens/--max-batch-size as they "
                   "are (SEMSERVE_BATCH_POLICY)")
    s.add_argument("--calibration-seconds", type=float, default=_env("calibration_seconds", b.calibration_seconds),
                   help="time the batching measurement may take per model and device")
    s.add_argument("--max-batch-tokens", type=int, default=_env("max_batch_tokens", None),
                   help=f"padded tokens per batch (items x longest); given, it overrides the measurement "
                   f"(fixed policy default {b.max_batch_tokens})")
    s.add_argument("--max-batch-size", type=int, default=_env("max_batch_size", None),
                   help=f"items per batch; given, it overrides the measurement (fixed policy default {b.max_batch_size})")
    s.add_argument("--max-queue-delay-ms", type=float, default=_env("max_queue_delay_ms", b.max_queue_delay_us / 1000),
                   help="how long the oldest queued item waits for companions")
    s.add_argument("--max-queue-size", type=int, default=_env("max_queue_size", b.max_queue_size),
                   help="items waiting per model before RESOURCE_EXHAUSTED")
    s.add_argument("--max-queue-tokens", type=int, default=_env("max_queue_tokens", b.max_queue_tokens),
                   help="tokens waiting per model before RESOURCE_EXHAUSTED")
    s.add_argument("--max-queue-time-ms", type=float, default=_env("max_queue_time_ms", b.max_queue_time_ms),
                   help="refuse a request at once (RESOURCE_EXHAUSTED) when its estimated wait, queued tokens / the "
                   "model's measured tokens/s, is longer; 0 turns it off (needs the measured batch policy)")
    s.add_argument("--max-texts-per-request", type=int, default=_env("max_texts_per_request", l.max_texts_per_request))
    s.add_argument("--max-documents-per-rerank", type=int,
                   default=_env("max_documents_per_rerank", l.max_documents_per_rerank))
    s.add_argument("--max-message-bytes", type=int, default=_env("max_message_bytes", l.max_receive_message_bytes),
                   help="largest request message")
    s.add_argument("--grace-period-s", type=float, default=_env("grace_period_s", 20.0),
                   help="seconds calls in flight get after SIGTERM")
    s.add_argument("--metrics-port", type=int, default=_env("metrics_port", 9090),
                   help="Prometheus /metrics over HTTP; 0 disables (SEMSERVE_METRICS_PORT)")
    s.add_argument("--metrics-host", default=_env("metrics_host", None),
                   help="address /metrics binds; default: --host (SEMSERVE_METRICS_HOST)")
    s.add_argument("--tokenizer-threads", type=int, default=_env("tokenizer_threads", 2))
    s.add_argument("--no-merge-engine-calls", dest="merge_engine_calls", action="store_false",
                   default=_env("merge_engine_calls", "1") not in ("0", "false", "no"),
                   help="send every model call to the engine on its own, instead of merging a front end's concurrent "
                   "calls of one model, none held past --max-queue-delay-ms (SEMSERVE_MERGE_ENGINE_CALLS=0)")
    s.add_argument("--log-level", default=_env("log_level", "INFO"))
    s.add_argument("--tracing", choices=("off", "otlp"), default=_env("tracing", "off"),
                   help="OpenTelemetry spans of each request (RPC, tokenize, engine, queue, inference) over OTLP to "
                   "OTEL_EXPORTER_OTLP_ENDPOINT; needs pip install 'semserve[tracing]' (SEMSERVE_TRACING)")
    s.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   default=_env("cuda_graphs", "1") not in ("0", "false", "no"),
                   help="on GPUs, launch kernels from Python instead of replaying captured CUDA graphs "
                   "(SEMSERVE_CUDA_GRAPHS=0)")
    s.add_argument("--no-unpadded", dest="unpadded", action="store_false",
                   default=_env("unpadded", "1") not in ("0", "false", "no"),
                   help="on GPUs, run BERT models on padded batches instead of only their real tokens "
                   "(SEMSERVE_UNPADDED=0)")
    add_security_arguments(s)
    add_search_arguments(s)
    from semserve.training.cli import add_model_tool_subcommands
    from semserve.training.cli import add_subcommands as add_training_subcommands

    add_training_subcommands(sub)
    add_model_tool_subcommands(sub)
    k = sub.add_parser("api-key", help="make an API key and the line that grants it a role in --api-keys-file")
    k.add_argument("--role", choices=ROLES, required=True)
    k.add_argument("--label", default="", help="a name for the key, kept in the file (no spaces)")
    return parser


def add_security_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--tls-cert", type=Path, default=_env("tls_cert", None),
                   help="PEM certificate (chain) of the gRPC port; with --tls-key turns TLS on; re-read when it "
                   "changes or on SIGHUP (SEMSERVE_TLS_CERT)")
    s.add_argument("--tls-key", type=Path, default=_env("tls_key", None), help="PEM private key (SEMSERVE_TLS_KEY)")
    s.add_argument("--tls-client-ca", type=Path, default=_env("tls_client_ca", None),
                   help="PEM CA: clients must present a certificate it signed (mTLS) (SEMSERVE_TLS_CLIENT_CA)")
    s.add_argument("--api-keys-file", type=Path, default=_env("api_keys_file", None),
                   help="lines 'ROLE SHA256-HEX [LABEL]' (roles: read, write, admin; `semserve api-key` makes them); "
                   "every RPC but health then needs 'authorization: Bearer KEY'; re-read when it changes "
                   "(SEMSERVE_API_KEYS_FILE)")
    s.add_argument("--admin-token", default=_env("admin_token", None),
                   help="one admin key given directly (beside --api-keys-file); alone it guards only "
                   "LoadModel/UnloadModel (SEMSERVE_ADMIN_TOKEN)")
    s.add_argument("--reflection", choices=("on", "off"), default=_env("reflection", "on"),
                   help="gRPC server reflection (needs the read role when keys are on) (SEMSERVE_REFLECTION)")
    s.add_argument("--model-root", type=Path, default=_env("model_root", None),
                   help="LoadModel loads only folders under this one; unset, LoadModel is off (SEMSERVE_MODEL_ROOT)")


def security_config_from_args(args: argparse.Namespace) -> SecurityConfig:
    return SecurityConfig(
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        api_keys_file=args.api_keys_file, admin_token=args.admin_token or None,
        reflection=args.reflection == "on", model_root=args.model_root,
    )


def add_search_arguments(s: argparse.ArgumentParser) -> None:
    sc = SearchConfig()
    s.add_argument("--data-dir", default=_env("data_dir", None),
                   help="folder for search collections (one SQLite file each); without it collections "
                   "are lost on restart (SEMSERVE_DATA_DIR)")
    s.add_argument("--search-devices", default=_env("search_devices", sc.devices),
                   help="devices of the search shards: auto (the model devices), cpu, cuda, or cuda:0,cuda:1")
    s.add_argument("--search-shards-per-device", type=int, default=_env("search_shards_per_device", sc.shards_per_device),
                   help="shards of each collection on every search device")
    s.add_argument("--search-dtype", default=_env("search_dtype", sc.dtype),
                   help="storage of the shards: auto (float16 on GPU, float32 on CPU), float32, float16, bfloat16")
    s.add_argument("--search-chunk-rows", type=int, default=_env("search_chunk_rows", sc.chunk_rows),
                   help="rows scored per step for large query batches (bounds the score buffer)")


def search_config_from_args(args: argparse.Namespace) -> SearchConfig:
    return SearchConfig(
        data_dir=Path(args.data_dir).expanduser() if args.data_dir else None,
        devices=args.search_devices,
        shards_per_device=args.search_shards_per_device,
        dtype=args.search_dtype,
        chunk_rows=args.search_chunk_rows,
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    encoders = args.encoder if args.encoder is not None else _env_list("ENCODERS")
    rerankers = args.reranker if args.reranker is not None else _env_list("RERANKERS")
    encoder_specs = [ModelSpec.parse(v, "encoder") for v in encoders]
    if not encoder_specs:
        from semserve.models.bundled import default_encoder_path

        encoder_specs = [ModelSpec(name="all-MiniLM-L6-v2", path=default_encoder_path(), kind="encoder")]
    prompts = args.default_prompt_name if args.default_prompt_name is not None else _env_list("DEFAULT_PROMPT_NAMES")
    encoder_specs = with_default_prompts(encoder_specs, prompts)
    return ServerConfig(
        host=args.host,
        port=args.port,
        encoders=tuple(encoder_specs),
        rerankers=tuple(ModelSpec.parse(v, "cross_encoder") for v in rerankers),
        device=args.device,
        dtype=args.dtype,
        batching=BatchingConfig(
            max_batch_tokens=args.max_batch_tokens if args.max_batch_tokens is not None else BatchingConfig.max_batch_tokens,
            max_batch_size=args.max_batch_size if args.max_batch_size is not None else BatchingConfig.max_batch_size,
            policy=args.batch_policy,
            calibration_seconds=args.calibration_seconds,
            explicit=frozenset(
                name for name in ("max_batch_tokens", "max_batch_size") if getattr(args, name) is not None
            ),
            max_queue_delay_us=round(args.max_queue_delay_ms * 1000),
            max_queue_size=args.max_queue_size,
            max_queue_tokens=args.max_queue_tokens,
            max_queue_time_ms=args.max_queue_time_ms,
        ),
        limits=RequestLimits(
            max_texts_per_request=args.max_texts_per_request,
            max_documents_per_rerank=args.max_documents_per_rerank,
            max_receive_message_bytes=args.max_message_bytes,
        ),
        engines=args.engines,
        grace_period_s=args.grace_period_s,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host or None,
        tokenizer_threads=args.tokenizer_threads,
        merge_engine_calls=args.merge_engine_calls,
        log_level=args.log_level,
        tracing=args.tracing,
        security=security_config_from_args(args),
        cuda_graphs=args.cuda_graphs,
        unpadded=args.unpadded,
        search=search_config_from_args(args),
    )


def with_default_prompts(specs: list[ModelSpec], values: list[str]) -> list[ModelSpec]:
    """Apply ``--default-prompt-name [MODEL=]PROMPT`` values to the encoder specs they name."""
    import dataclasses

    by_name = {spec.name: spec for spec in specs}
    for value in values:
        model, sep, prompt = value.partition("=")
        if not sep:
            model, prompt = specs[0].name, value
        if model not in by_name:
            raise ConfigError(f"--default-prompt-name {value!r}: no encoder named {model!r}")
        by_name[model] = dataclasses.replace(by_name[model], default_prompt_name=prompt.strip())
    return [by_name[spec.name] for spec in specs]


def frontends_from_arg(value: str) -> int | None:
    """None for auto (decided once the engine knows its devices), else the count."""
    value = str(value).strip().lower()
    if value == "auto":
        return None
    if not value.isdigit():
        raise ConfigError(f"--frontends must be a number or auto, got {value!r}")
    return int(value)


def serve_in_one_process(config: ServerConfig) -> int:
    from semserve.engine.runtime.devices import resolve_devices
    from semserve.models.errors import ModelLoadError
    from semserve.process.children import exit_now
    from semserve.server import serve_until_signalled

    try:
        resolve_devices(config.device)
        asyncio.run(serve_until_signalled(config))
    except (ConfigError, ModelLoadError) as exc:
        print(f"semserve: {exc}", file=sys.stderr)
        return 2
    exit_now(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Models come from local folders only; never reach for a hub, and keep the log readable.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "api-key":
        from semserve.frontend.auth import hash_key, new_key

        key = new_key()
        print(f"key (give it to the caller; it is not stored): {key}")
        print(f"line for --api-keys-file: {args.role} {hash_key(key)} {args.label}".rstrip())
        return 0
    if args.command == "serve":
        try:
            config = config_from_args(args)
            config.validate()
            frontends = frontends_from_arg(args.frontends)
        except ConfigError as exc:
            print(f"semserve: {exc}", file=sys.stderr)
            return 2
        from semserve.process.supervisor import default_frontends, serve_with_frontends

        if frontends is None:
            frontends = default_frontends(config.device)
        if frontends == 0:
            if config.engines == "per-device":
                print("semserve: --engines per-device needs front-end processes (--frontends 1 or more): "
                      "they spread the calls over the engines", file=sys.stderr)
                return 2
            return serve_in_one_process(config)

        return asyncio.run(serve_with_frontends(config, frontends))
    if args.command in ("finetune", "evaluate-pairs", "quantization-ranges"):
        from semserve.training.cli import run as run_training

        return run_training(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
