"""`semserve-client`: talk to a semserve server from the shell. Output is JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import grpc
from google.protobuf.json_format import MessageToDict

from semserve_client.channels import DEFAULT_RETRY
from semserve_client.client import DEFAULT_TARGET, SemserveClient
from semserve_client.requests import FORMATS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semserve-client", description="client for a semserve server")
    parser.add_argument("--target", default=os.environ.get("SEMSERVE_TARGET", DEFAULT_TARGET),
                        help="server address (SEMSERVE_TARGET)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each call in seconds")
    parser.add_argument("--api-key", default=os.environ.get("SEMSERVE_API_KEY"),
                        help="sent as 'authorization: Bearer KEY' (SEMSERVE_API_KEY)")
    parser.add_argument("--no-retry", action="store_true",
                        help="do not retry idempotent calls answered UNAVAILABLE or RESOURCE_EXHAUSTED")
    parser.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs (or --ca-cert)")
    parser.add_argument("--ca-cert", default=os.environ.get("SEMSERVE_CA_CERT"),
                        help="PEM CA that signed the server's certificate; implies --tls (SEMSERVE_CA_CERT)")
    parser.add_argument("--client-cert", default=os.environ.get("SEMSERVE_CLIENT_CERT"),
                        help="PEM client certificate for mTLS (SEMSERVE_CLIENT_CERT)")
    parser.add_argument("--client-key", default=os.environ.get("SEMSERVE_CLIENT_KEY"),
                        help="PEM key of --client-cert (SEMSERVE_CLIENT_KEY)")
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser("embed", help="embed texts; prints {model, dimension, embeddings}")
    e.add_argument("texts", nargs="+")
    e.add_argument("--model", default="")
    e.add_argument("--no-normalize", action="store_true")
    e.add_argument("--no-truncate", action="store_true")
    e.add_argument("--format", choices=list(FORMATS), default="float32",
                   help="wire format and precision (int8/uint8: one byte a dimension; binary/ubinary: packed bits)")
    e.add_argument("--dimensions", type=int, default=None, help="keep the first N dimensions (Matryoshka models)")
    e.add_argument("--truncation-direction", choices=("right", "left"), default="right",
                   help="left keeps the end of a text over the model's max tokens")
    e.add_argument("--prompt-name", default=None, help="one of the model's prompts (GetInfo), prepended to each text")
    e.add_argument("--prompt", default=None, help="a literal prompt prepended to each text, e.g. 'query: '")

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
    b.add_argument("--channels", type=int, default=0,
                   help="connections per client process; 0: one per four unary calls in flight, one per stream")
    b.add_argument("--model", default="")

    c = sub.add_parser("collections", help="create, list, inspect or drop search collections")
    csub = c.add_subparsers(dest="action", required=True)
    cc = csub.add_parser("create", help="create a collection")
    cc.add_argument("name")
    cc.add_argument("--model", default="", help="encoder for text (default: the server's default encoder)")
    cc.add_argument("--dimension", type=int, default=0, help="0 takes the model's")
    cc.add_argument("--metric", choices=["cosine", "dot"], default="cosine")
    cc.add_argument("--document-prompt", default="", help="prepended to documents' text when embedded, e.g. 'passage: '")
    cc.add_argument("--query-prompt", default="", help="prepended to text queries, e.g. 'query: '")
    cc.add_argument("--storage", choices=["float", "int8", "binary"], default="float",
                    help="int8 (a quarter of the device memory) or binary (a thirty-second): candidates rescored "
                    "exactly (cosine only)")
    csub.add_parser("list", help="every collection with its size")
    for action in ("info", "drop"):
        ca = csub.add_parser(action, help=f"{action} one collection")
        ca.add_argument("name")

    u = sub.add_parser("upsert", help="insert or replace one document (text encoded by the server)")
    u.add_argument("id")
    u.add_argument("text")
    u.add_argument("--collection", required=True)
    u.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata, repeatable")

    d = sub.add_parser("delete", help="delete documents by id")
    d.add_argument("ids", nargs="+")
    d.add_argument("--collection", required=True)

    g = sub.add_parser("get", help="documents by id")
    g.add_argument("ids", nargs="+")
    g.add_argument("--collection", required=True)
    g.add_argument("--embeddings", action="store_true")

    q = sub.add_parser("search", help="top-k documents for each QUERY, optionally reranked by the cross-encoder")
    q.add_argument("queries", nargs="+", metavar="QUERY")
    q.add_argument("--collection", required=True)
    q.add_argument("--top-k", type=int, default=10)
    q.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="metadata equality, repeatable")
    q.add_argument("--rerank", action="store_true", help="rerank the top-k candidates with the cross-encoder")
    q.add_argument("--rerank-model", default="")
    q.add_argument("--top-n", type=int, default=0, help="results kept after reranking (0: all candidates)")
    q.add_argument("--no-text", action="store_true", help="leave the documents' text out")

    x = sub.add_parser("index", help="load a CSV, TSV or JSON Lines file into a collection (resumable)")
    x.add_argument("file")
    x.add_argument("--collection", required=True)
    x.add_argument("--text-column", required=True)
    x.add_argument("--id-column", default=None, help="default: the row number")
    x.add_argument("--metadata-columns", default="", help="comma-separated columns kept as metadata")
    x.add_argument("--format", choices=["csv", "tsv", "jsonl"], default=None, help="default: from the extension")
    x.add_argument("--batch-size", type=int, default=256)
    x.add_argument("--in-flight", type=int, default=4, help="batches awaiting acknowledgement at once")
    x.add_argument("--max-rows", type=int, default=None, help="stop after this many rows (a rerun resumes)")
    x.add_argument("--resume-file", default=None, help="default: FILE.semserve-progress.json")
    x.add_argument("--restart", action="store_true", help="ignore earlier progress and start at the first row")
    x.add_argument("--create", action="store_true", help="create the collection first if it does not exist")
    x.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("info", help="models and limits")
    sub.add_parser("health", help="overall health status")
    return parser


def run(args: argparse.Namespace, client: SemserveClient) -> object:
    if args.command == "embed":
        result = client.embed(args.texts, args.model, not args.no_normalize, not args.no_truncate, args.format,
                              args.dimensions, args.truncation_direction, args.prompt_name, args.prompt)
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
        # Written out rather than MessageToDict, which drops an index of 0 (often the best document).
        return {
            "model": response.model,
            "results": [{"index": r.index, "score": round(r.score, 6), "document": r.document} for r in response.results],
            "timing": MessageToDict(response.timing, preserving_proto_field_name=True),
        }
    if args.command == "bench":
        from semserve_client.bench import LoadSpec, run_load

        spec = LoadSpec(target=args.target, mode=args.mode, concurrency=args.concurrency,
                        request_size=args.request_size, duration_s=args.duration, warmup_s=args.warmup,
                        model=args.model, window=args.window, channels=args.channels)
        return run_load(spec, processes=args.processes)
    if args.command in ("collections", "upsert", "delete", "get", "search", "index"):
        return run_search(args, client)
    if args.command == "info":
        return MessageToDict(client.info(), preserving_proto_field_name=True)
    if args.command == "health":
        return {"status": client.health_status()}
    raise AssertionError(args.command)


def _pairs(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep:
            raise SystemExit(f"semserve-client: expected KEY=VALUE, got {value!r}")
        out[key] = val
    return out


def run_search(args: argparse.Namespace, client: SemserveClient) -> object:
    as_dict = lambda m: MessageToDict(m, preserving_proto_field_name=True)  # noqa: E731
    if args.command == "collections":
        if args.action == "create":
            return as_dict(client.create_collection(args.name, args.model, args.dimension, args.metric,
                                                    args.document_prompt, args.query_prompt, args.storage))
        if args.action == "list":
            return {"collections": [as_dict(c) for c in client.list_collections()]}
        if args.action == "info":
            return as_dict(client.get_collection(args.name))
        client.drop_collection(args.name)
        return {"dropped": args.name}
    if args.command == "upsert":
        response = client.upsert(args.collection, [args.id], [args.text], metadata=[_pairs(args.meta)])
        return as_dict(response)
    if args.command == "delete":
        return {"deleted": client.delete(args.collection, args.ids)}
    if args.command == "get":
        return as_dict(client.get_documents(args.collection, args.ids, args.embeddings))
    if args.command == "search":
        response = client.search_collection(
            args.collection, args.queries, args.top_k, filter=_pairs(args.filter), include_text=not args.no_text,
            include_metadata=True, rerank=args.rerank, rerank_model=args.rerank_model, top_n=args.top_n,
        )
        return as_dict(response)
    if args.command == "index":
        from pathlib import Path

        from semserve_client.indexing import IndexSpec, index_file

        if args.create and args.collection not in {c.name for c in client.list_collections()}:
            client.create_collection(args.collection)
        spec = IndexSpec(
            path=Path(args.file), collection=args.collection, text_column=args.text_column,
            id_column=args.id_column,
            metadata_columns=tuple(c for c in args.metadata_columns.split(",") if c),
            format=args.format, batch_size=args.batch_size, in_flight=args.in_flight, max_rows=args.max_rows,
            resume_file=Path(args.resume_file) if args.resume_file else None, restart=args.restart,
            progress_bar=not args.no_progress,
        )
        return index_file(client, spec)
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = SemserveClient(args.target, timeout=args.timeout, api_key=args.api_key, tls=args.tls,
                                ca_cert=args.ca_cert, client_cert=args.client_cert, client_key=args.client_key,
                                retry=None if args.no_retry else DEFAULT_RETRY)
        with client:
            print(json.dumps(run(args, client), ensure_ascii=False))
    except grpc.RpcError as exc:
        print(f"semserve-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
