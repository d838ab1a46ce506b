"""`semserve-client`: talk to a semserve server from the shell. Output is JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import grpc
from google.protobuf.json_format import MessageToDict

from semserve_client.client import DEFAULT_TARGET, SemserveClient
from semserve_client.requests import FORMATS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semserve-client", description="client for a semserve server")
    parser.add_argument("--target", default=os.environ.get("SEMSERVE_TARGET", DEFAULT_TARGET),
                        help="server address (SEMSERVE_TARGET)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each call in seconds")
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser("embed", help="embed texts; prints {model, dimension, embeddings}")
    e.add_argument("texts", nargs="+")
    e.add_argument("--model", default="")
    e.add_argument("--no-normalize", action="store_true")
    e.add_argument("--no-truncate", action="store_true")
    e.add_argument("--format", choices=list(FORMATS), default="float32", help="wire format")

    t = sub.add_parser("tokenize", help="show the tokens a model sees")
    t.add_argument("texts", nargs="+")
    t.add_argument("--model", default="")

    s = sub.add_parser("similarity", help="cosine of SOURCE against each TEXT")
    s.add_argument("source")
    s.add_argument("texts", nargs="+")
    s.add_argument("--model", default="")

    r = sub.add_parser("rerank", help="score documents against a query with the cross-encoder")
    r.add_argument("query")
    r.add_argument("documents", nargs="+")
    r.add_argument("--model", default="")
    r.add_argument("--top-n", type=int, default=None)
    r.add_argument("--raw-scores", action="store_true")

    b = sub.add_parser("bench", help="closed-loop load: throughput and latency percentiles (JSON)")
    b.add_argument("--mode", choices=["embed", "embed-stream", "rerank"], default="embed")
    b.add_argument("--concurrency", type=int, default=32, help="requests (or streams) in flight")
    b.add_argument("--request-size", type=int, default=32, help="texts (or documents) per request")
    b.add_argument("--duration", type=float, default=10.0, help="seconds measured, after the warm-up")
    b.add_argument("--warmup", type=float, default=2.0)
    b.add_argument("--processes", type=int, default=1, help="client processes sharing the concurrency")
    b.add_argument("--window", type=int, default=8, help="requests in flight per stream")
    b.add_argument("--model", default="")

    sub.add_parser("info", help="models and limits")
    sub.add_parser("health", help="overall health status")
    return parser


def run(args: argparse.Namespace, client: SemserveClient) -> object:
    if args.command == "embed":
        result = client.embed(args.texts, args.model, not args.no_normalize, not args.no_truncate, args.format)
        return {
            "model": result.response.model,
            "dimension": result.response.dimension,
            "embeddings": result.vectors.tolist(),
        }
    if args.command == "tokenize":
        return MessageToDict(client.tokenize(args.texts, args.model), preserving_proto_field_name=True)
    if args.command == "similarity":
        return {"scores": client.similarity(args.source, args.texts, args.model)}
    if args.command == "rerank":
        response = client.rerank(args.query, args.documents, args.model, args.top_n, True, args.raw_scores)
        return MessageToDict(response, preserving_proto_field_name=True)
    if args.command == "bench":
        from semserve_client.bench import LoadSpec, run_load

        spec = LoadSpec(target=args.target, mode=args.mode, concurrency=args.concurrency,
                        request_size=args.request_size, duration_s=args.duration, warmup_s=args.warmup,
                        model=args.model, window=args.window)
        return run_load(spec, processes=args.processes)
    if args.command == "info":
        return MessageToDict(client.info(), preserving_proto_field_name=True)
    if args.command == "health":
        return {"status": client.health_status()}
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with SemserveClient(args.target, timeout=args.timeout) as client:
            print(json.dumps(run(args, client), ensure_ascii=False))
    except grpc.RpcError as exc:
        print(f"semserve-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
