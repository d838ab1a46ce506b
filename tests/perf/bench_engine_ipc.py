"""The engine loop's own cost per request over IPC, without a model (not part of `make test`).

An engine process serves the core API through the real ``EngineEndpoint``, ``Engine.encode``,
``DynamicBatcher`` and ``DeviceWorker``, with a runner that returns zeros at once; client
processes stand in for front ends (``RemoteCore``, many calls in flight). The figures are the
calls per second the engine answers and the engine process's CPU time per call, which bounds
what one engine can take from any number of front ends (1 / that time per core), whatever the
GPU. Run on a machine with spare cores for the clients:

    PYTHONPATH=server:client .venv/bin/python tests/perf/bench_engine_ipc.py --clients 2 --texts 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIMENSION = 384


class NullRunner:
    device = "cpu"

    def prepare(self, parts):
        return sum(len(indexes) for _, indexes in parts)

    def run(self, rows):
        return np.zeros((rows, DIMENSION), dtype=np.float32)


def null_engine():
    from semserve.config import BatchingConfig, ServerConfig
    from semserve.core.types import ENCODER, TokenizerSpec
    from semserve.engine.batching import DynamicBatcher
    from semserve.engine.engine import Engine
    from semserve.engine.registry import HostedModel
    from semserve.engine.runtime.worker import DeviceWorker
    from semserve.engine.stats import ModelStats

    config = ServerConfig(device="cpu", batching=BatchingConfig(max_batch_size=512, max_batch_tokens=65536,
                                                                max_queue_size=1 << 20, max_queue_tokens=1 << 30))
    engine = Engine(config)
    stats = ModelStats("null")
    batcher = DynamicBatcher("null", [DeviceWorker(NullRunner(), stats, 2)], config.batching, stats)
    engine.registry.add(HostedModel(
        name="null", kind=ENCODER, path=Path("."), tokenizer=TokenizerSpec("null", 1, "", 512, False, 0),
        batcher=batcher, stats=stats, devices=["cpu"], dtype="float32", max_tokens=512, dimension=DIMENSION,
    ))
    return engine, batcher


def engine_main(address: str, ready) -> None:
    from semserve.ipc.endpoint import EngineEndpoint

    async def run():
        engine, batcher = null_engine()
        batcher.start()
        endpoint = EngineEndpoint(engine, address)
        await endpoint.start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(run())


def client_main(address: str, texts: int, in_flight: int, seconds: float, out) -> None:
    from semserve.core.types import TokenBatch
    from semserve.ipc.client import RemoteCore

    async def run():
        core = RemoteCore(address)
        await core.start()
        batch = TokenBatch.from_lists([[101] + [2000 + i] * 14 + [102] for i in range(texts)])
        done = 0
        stop_at = time.monotonic() + seconds

        async def loop():
            nonlocal done
            while time.monotonic() < stop_at:
                result = await core.encode("null", batch, None)
                assert result.vectors.shape == (texts, DIMENSION)
                done += 1

        await asyncio.gather(*(loop() for _ in range(in_flight)))
        await core.close()
        return done

    out.put(asyncio.run(run()))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2, help="client processes (stand-ins for front ends)")
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight per client")
    parser.add_argument("--texts", type=int, default=1, help="texts per call")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    address = f"ipc://{tempfile.mkdtemp(prefix='semserve-bench-')}/engine"
    ready = ctx.Event()
    engine = ctx.Process(target=engine_main, args=(address, ready), daemon=True)
    engine.start()
    ready.wait(60)
    out = ctx.Queue()
    cpu_before = cpu_seconds(engine.pid)
    started = time.monotonic()
    clients = [ctx.Process(target=client_main, args=(address, args.texts, args.in_flight, args.seconds, out))
               for _ in range(args.clients)]
    for c in clients:
        c.start()
    calls = sum(out.get(timeout=args.seconds + 60) for _ in clients)
    elapsed = time.monotonic() - started
    engine_cpu = cpu_seconds(engine.pid) - cpu_before
    for c in clients:
        c.join(10)
    engine.terminate()
    print(json.dumps({
        "clients": args.clients, "in_flight_per_client": args.in_flight, "texts_per_call": args.texts,
        "calls_per_s": round(calls / elapsed), "texts_per_s": round(calls * args.texts / elapsed),
        "engine_cpu_us_per_call": round(engine_cpu / calls * 1e6, 1),
        "engine_cpu_share": round(engine_cpu / elapsed, 2), "cores": os.cpu_count(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
