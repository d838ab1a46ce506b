"""The engine core alone on a GPU (not part of `make test`): a model's batcher and worker fed
pre-tokenized requests from one event loop, with no gRPC, protobuf, front ends or IPC. Its rate
is the ceiling the served figures of bench_gpu.py could reach with free transport.

    python3 tests/perf/gpu_engine_bench.py --minilm .models/minilm [--duration 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]

from semserve.config import BatchingConfig, ModelSpec  # noqa: E402
from semserve.core.types import TokenBatch  # noqa: E402
from semserve.engine.registry import load_model  # noqa: E402
from semserve_client.bench import synthetic_texts  # noqa: E402


async def closed_loop(batcher, requests: list[TokenBatch], concurrency: int, duration: float, warmup: float,
                      stats=None) -> dict:
    done_items = 0
    latencies: list[float] = []
    queue_s: list[float] = []
    inference_s: list[float] = []
    measuring = False
    stop = False

    async def client(i: int) -> None:
        nonlocal done_items
        n = i
        while not stop:
            tokens = requests[n % len(requests)]
            n += concurrency
            started = time.perf_counter()
            request = await batcher.submit(tokens)
            if measuring:
                done_items += len(tokens.lengths)
                latencies.append(time.perf_counter() - started)
                queue_s.append(request.timing.queue_s)
                inference_s.append(request.timing.inference_s)

    tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    t0, cpu0 = time.perf_counter(), time.process_time()
    batches0 = stats.batches if stats else 0
    await asyncio.sleep(duration)
    measuring = False
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    batches = (stats.batches - batches0) if stats else 0
    stop = True
    await asyncio.gather(*tasks)
    latencies.sort()
    mean = lambda xs: 1000 * sum(xs) / max(1, len(xs))  # noqa: E731
    return {"items_per_s": done_items / elapsed, "requests": len(latencies),
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "queue_ms": mean(queue_s), "inference_ms": mean(inference_s),
            "batches_per_s": batches / elapsed, "items_per_batch": done_items / max(1, batches),
            "process_cores": cpu / elapsed, "cpu_ms_per_batch": 1000 * cpu / max(1, batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minilm", type=Path, required=True)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--depths", default="2,3")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(args.minilm))
    texts = synthetic_texts(8192, seed=1)
    ids = tok(texts, truncation=True, max_length=256)["input_ids"]
    out: dict = {"device": torch.cuda.get_device_name(0)}
    for depth in (int(d) for d in args.depths.split(",")):
        config = BatchingConfig(max_batch_tokens=32768, max_batch_size=512, max_queue_delay_us=2000, policy="fixed",
                                worker_pipeline_depth=depth - 1)  # a GPU worker adds one
        hosted = load_model(ModelSpec("minilm", args.minilm, "encoder"), ["cuda:0"], "float16", config)

        async def run() -> dict:
            hosted.batcher.start()
            result = {}
            for size, concurrency in ((32, 64), (1, 256)):
                requests = [TokenBatch.from_lists(ids[i:i + size]) for i in range(0, len(ids) - size, size)]
                result[f"{size}_text_{concurrency}_in_flight"] = await closed_loop(
                    hosted.batcher, requests, concurrency, args.duration, args.warmup, hosted.stats)
                print(depth, size, json.dumps(result[f"{size}_text_{concurrency}_in_flight"]), flush=True)
            await hosted.batcher.stop()
            return result

        out[f"depth_{depth}"] = asyncio.run(run())
        stats = hosted.stats
        out[f"depth_{depth}"]["batches"] = getattr(stats, "batches", None)
        del hosted
        torch.cuda.empty_cache()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
