"""Benchmark (not part of `make test`): how much of a front end's CPU per single-text call is
gRPC-Python's own, and how much is the front end's. One server process at a time, driven by
h2load's single-text unary load (tests/perf/h2load_load.py) over 16 connections x 4 calls, at a
fixed rate (``--rate`` calls/s) or as fast as it goes (``--rate 0``):

    bare       a grpc.aio server whose Embed handler returns a fixed reply of the real size
    frontend   the front end (frontend/server.py) over an in-process core whose encode answers
               at once: no engine work and no IPC are counted, only the front end's

Each kind reports calls/s, and CPU µs per call of the whole process and of its main thread
(the event loop, where gRPC-Python's call handling and the handlers run). Repeat kinds to
alternate them (``bare,frontend,bare,frontend``).

    PYTHONPATH=server:client:tests/perf:tests .venv/bin/python tests/perf/bench_frontend_floor.py \\
        --h2load PATH [--encoder DIR] --kinds bare,frontend,bare,frontend --rate 1600 --out FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import h2load_load
from semserve_client.bench import synthetic_texts

CONNECTIONS, STREAMS = 16, 4
DIMENSION = 384


def serve_bare(ready: multiprocessing.Queue) -> None:
    import grpc

    from semserve_client.v1 import encoder_pb2, encoder_pb2_grpc

    reply = encoder_pb2.EmbedResponse(model="minilm", dimension=DIMENSION)
    reply.embeddings.add().values.extend(np.random.default_rng(0).random(DIMENSION, dtype=np.float32).tolist())

    class Servicer(encoder_pb2_grpc.EncoderServiceServicer):
        async def Embed(self, request, context):
            return reply

    async def main() -> None:
        server = grpc.aio.server()
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


def serve_frontend(ready: multiprocessing.Queue, encoder: str) -> None:
    from semserve.cli import build_parser, config_from_args
    from semserve.core.types import EncodeResult, Timing
    from semserve.engine.engine import Engine
    from semserve.frontend.server import FrontEnd

    config = config_from_args(build_parser().parse_args(
        ["serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--encoder", f"minilm={encoder}",
         "--max-queue-size", "65536"]))

    async def main() -> None:
        engine = Engine(config)
        engine.load_models()
        await engine.start()
        dimension = next(m.dimension for m in (await engine.models()).models if m.name == "minilm")

        async def encode(model, tokens, deadline):  # the instant core: no engine work is counted
            await asyncio.sleep(0)
            return EncodeResult(np.ones((len(tokens), dimension), np.float32), Timing())

        engine.encode = encode
        frontend = FrontEnd(engine, config)
        ready.put(await frontend.start())
        await asyncio.Event().wait()

    asyncio.run(main())


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of the whole process and of its main thread."""
    def ticks(path: str) -> int:
        stat = Path(path).read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])
    hz = os.sysconf("SC_CLK_TCK")
    return ticks(f"/proc/{pid}/stat") / hz, ticks(f"/proc/{pid}/task/{pid}/stat") / hz


def drive(h2load: str, address: str, rate: int, duration_s: int) -> dict:
    return h2load_load.run_h2load(h2load, address, "unary", "minilm", synthetic_texts(2000, seed=1), duration_s, 1,
                                  CONNECTIONS, STREAMS, 1, rate_per_connection=max(1, rate // CONNECTIONS) if rate else 0)


def measure(kind: str, args) -> dict:
    ready: multiprocessing.Queue = multiprocessing.Queue()
    target, extra = (serve_bare, ()) if kind == "bare" else (serve_frontend, (str(args.encoder),))
    process = multiprocessing.Process(target=target, args=(ready, *extra), daemon=True)
    process.start()
    try:
        port = ready.get(timeout=300)
        figures: dict = {}
        load = threading.Thread(target=lambda: figures.update(drive(args.h2load, f"127.0.0.1:{port}", args.rate,
                                                                     int(args.duration) + 3)))
        load.start()
        time.sleep(2.5)  # past h2load's warm-up
        (total0, main0), started = cpu_seconds(process.pid), time.monotonic()
        time.sleep(args.duration)
        (total1, main1), elapsed = cpu_seconds(process.pid), time.monotonic() - started
        load.join()
    finally:
        process.kill()
    rate = figures["requests_per_s"]
    return {"kind": kind, "calls_per_s": rate, "failed": figures.get("failed"),
            "process_us_per_call": round((total1 - total0) / elapsed / rate * 1e6, 1),
            "main_thread_us_per_call": round((main1 - main0) / elapsed / rate * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--h2load", required=True)
    parser.add_argument("--encoder", type=Path, help="an encoder folder; default: the tiny test encoder")
    parser.add_argument("--kinds", default="bare,frontend,bare,frontend")
    parser.add_argument("--rate", type=int, default=1600, help="calls/s over all connections; 0: as fast as it goes")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.encoder is None:
        from model_factory import make_tiny_st_encoder
        args.encoder = make_tiny_st_encoder(Path(tempfile.mkdtemp()) / "tiny")
    results = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "rate": args.rate, "runs": []}
    for kind in args.kinds.split(","):
        result = measure(kind, args)
        results["runs"].append(result)
        print(json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
