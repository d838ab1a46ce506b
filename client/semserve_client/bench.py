"""`semserve-client bench`: a closed-loop load generator with latency percentiles.

Each worker keeps one request in flight (unary) or ``window`` requests (streams) for the
duration; requests made during the warm-up are not counted. ``processes`` spreads workers over
several processes so the client's own Python is not the bottleneck being measured.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from semserve_client.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, reranker_pb2, reranker_pb2_grpc

MODES = ("embed", "embed-stream", "rerank")
_WORDS = (
    "search retrieval vector embedding server model batch token query document ranking semantic meaning "
    "neural network latency throughput request response cluster kubernetes python gpu memory shard index "
    "the a of to and in is for on with as by that this from at be are was it an or which news title"
).split()


def synthetic_texts(count: int, seed: int = 0, min_words: int = 6, max_words: int = 150) -> list[str]:
    """Deterministic texts with a spread of lengths (about 8 to 200 tokens with a BERT tokenizer)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        # Skewed towards short texts, as real queries and titles are, with a long tail.
        n = min(max_words, min_words + int(rng.expovariate(1 / 30)))
        out.append(" ".join(rng.choice(_WORDS) for _ in range(n)))
    return out


# Timing fields (without the _time_us suffix) that the summary reports as server_<name>_ms.
_TIMING_FIELDS = ("total", "queue", "tokenization", "inference", "transport")


@dataclass
class LoadSpec:
    target: str
    mode: str = "embed"
    concurrency: int = 32
    request_size: int = 32
    duration_s: float = 10.0
    warmup_s: float = 2.0
    model: str = ""
    window: int = 8  # requests in flight per stream (embed-stream)
    # Connections (channels); 0: one per four unary calls in flight, one per stream.
    channels: int = 0
    texts: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class LoadResult:
    requests: int
    items: int
    errors: int
    elapsed_s: float
    latencies_ms: list[float]
    # Sums of the server's Timing fields over the counted replies (server_<field> in the summary
    # is their mean, in ms): where a request's time went on the server, beside what the client saw.
    server_us: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "requests": self.requests,
            "items": self.items,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "items_per_s": round(self.items / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "requests_per_s": round(self.requests / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            **{f"server_{name}_ms": round(total / 1000 / max(1, self.requests), 3)
               for name, total in self.server_us.items()},
        }


def connections(spec: LoadSpec) -> int:
    """Channels (connections) one client process opens for ``spec``."""
    if spec.channels:
        return spec.channels
    return max(1, spec.concurrency if spec.mode == "embed-stream" else -(-spec.concurrency // 4))


async def _run(spec: LoadSpec) -> LoadResult:
    texts = spec.texts or synthetic_texts(4096, spec.seed)
    rng = random.Random(spec.seed)
    # A connection per channel (gRPC would share one per target), one per four unary calls in
    # flight and one per stream (a stream carries ``window`` calls): a server with several
    # front-end processes spreads connections, not calls (SO_REUSEPORT hashes each connection to
    # a process), so the load must arrive on many, as it does from many clients.
    channels = [
        grpc.aio.insecure_channel(spec.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections(spec))
    ]
    start = time.monotonic()
    count_from, stop_at = start + spec.warmup_s, start + spec.warmup_s + spec.duration_s
    latencies: list[float] = []
    counts = {"requests": 0, "items": 0, "errors": 0}
    server_us = dict.fromkeys(_TIMING_FIELDS, 0.0)

    def batch() -> list[str]:
        i = rng.randrange(len(texts))
        return [texts[(i + k) % len(texts)] for k in range(spec.request_size)]

    def record(sent: float, items: int, ok: bool, timing=None) -> None:
        now = time.monotonic()
        if sent >= count_from and now <= stop_at:
            if ok:
                counts["requests"] += 1
                counts["items"] += items
                latencies.append((now - sent) * 1000)
                if timing is not None:
                    for name in _TIMING_FIELDS:
                        server_us[name] += getattr(timing, name + "_time_us")
            else:
                counts["errors"] += 1

    async def unary_worker(n: int) -> None:
        channel = channels[n % len(channels)]
        if spec.mode == "rerank":
            call = reranker_pb2_grpc.RerankerServiceStub(channel).Rerank
        else:
            call = encoder_pb2_grpc.EncoderServiceStub(channel).Embed
        while time.monotonic() < stop_at:
            items = batch()
            if spec.mode == "rerank":
                request = reranker_pb2.RerankRequest(model=spec.model, query=items[0], documents=items)
            else:
                request = encoder_pb2.EmbedRequest(
                    model=spec.model, texts=items, format=common_pb2.EMBEDDING_FORMAT_FLOAT16_BYTES
                )
            sent = time.monotonic()
            try:
                reply = await call(request, timeout=60)
                record(sent, len(items), True, reply.timing)
            except grpc.aio.AioRpcError:
                record(sent, len(items), False)

    async def stream_worker(n: int) -> None:
        stub = encoder_pb2_grpc.EncoderServiceStub(channels[n % len(channels)])
        sent_at: dict[str, float] = {}
        slots = asyncio.Semaphore(spec.window)
        queue: asyncio.Queue = asyncio.Queue()

        async def requests():
            i = 0
            while time.monotonic() < stop_at:
                await slots.acquire()
                rid = f"{n}-{i}"
                i += 1
                sent_at[rid] = time.monotonic()
                yield encoder_pb2.EmbedStreamRequest(
                    id=rid,
                    request=encoder_pb2.EmbedRequest(
                        model=spec.model, texts=batch(), format=common_pb2.EMBEDDING_FORMAT_FLOAT16_BYTES
                    ),
                )

        call = stub.EmbedStream(requests(), timeout=spec.warmup_s + spec.duration_s + 60)
        async for response in call:
            ok = response.WhichOneof("result") == "response"
            record(sent_at.pop(response.id), spec.request_size, ok, response.response.timing if ok else None)
            slots.release()
        del queue

    worker = stream_worker if spec.mode == "embed-stream" else unary_worker
    await asyncio.gather(*(worker(n) for n in range(spec.concurrency)))
    for channel in channels:
        await channel.close()
    return LoadResult(counts["requests"], counts["items"], counts["errors"], spec.duration_s, latencies, server_us)


def _run_in_process(spec: LoadSpec) -> LoadResult:
    return asyncio.run(_run(spec))


def run_load(spec: LoadSpec, processes: int = 1) -> dict:
    """Run the load (over several processes if asked) and return merged figures."""
    if spec.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if processes <= 1:
        results = [_run_in_process(spec)]
    else:
        per = max(1, spec.concurrency // processes)
        specs = [
            LoadSpec(**{**spec.__dict__, "concurrency": per, "seed": spec.seed + i}) for i in range(processes)
        ]
        with mp.get_context("spawn").Pool(processes) as pool:
            results = pool.map(_run_in_process, specs)
    merged = LoadResult(
        requests=sum(r.requests for r in results),
        items=sum(r.items for r in results),
        errors=sum(r.errors for r in results),
        elapsed_s=spec.duration_s,
        latencies_ms=[x for r in results for x in r.latencies_ms],
        server_us={name: sum(r.server_us.get(name, 0.0) for r in results) for name in _TIMING_FIELDS},
    )
    summary = merged.summary()
    summary.update(mode=spec.mode, concurrency=spec.concurrency, request_size=spec.request_size,
                   processes=processes, model=spec.model)
    return summary
