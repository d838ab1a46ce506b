"""Search over gRPC end to end on a GPU server (not part of `make test`): a collection of random
unit vectors loaded through BulkUpsert, then vector queries (by default 1 and 64 per call, k = 10), from one client
with one call in flight, timed at the client; and a Health.Check round trip on the same
channel, the floor under any call.

    python3 tests/perf/bench_search_grpc.py --minilm .models/minilm --rows 1000000 [--frontends auto]
    python3 tests/perf/bench_search_grpc.py --minilm .models/minilm --rows 4000000 --dimension 768
    python3 tests/perf/bench_search_grpc.py --minilm .models/minilm --cases 1x10,64x10,64x1000,1024x10

The collection's dimension is the encoder's (MiniLM: 384; with ``--dimension`` a random BERT). Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from grpc_health.v1 import health_pb2

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]

from semserve_client import SemserveClient  # noqa: E402
from semserve_client import search_requests as sr  # noqa: E402

import bench_gpu  # noqa: E402  (same folder: the server launcher)


def start(args, data_dir: str) -> tuple[subprocess.Popen, str]:
    encoder = args.minilm
    if args.dimension != 384:
        # A random-init BERT of the wanted width: the collection's dimension is its encoder's.
        encoder = bench_gpu.make_random_folder(Path(data_dir) / "encoder", args.minilm, "encoder",
                                               hidden_size=args.dimension, num_hidden_layers=2,
                                               num_attention_heads=args.dimension // 64,
                                               intermediate_size=4 * args.dimension)
    return bench_gpu.launch([
        sys.executable, "-m", "semserve", "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
        "--device", args.device, "--dtype", "float16" if args.device == "cuda" else "auto",
        "--encoder", f"minilm={encoder}", "--data-dir", data_dir, "--frontends", args.frontends,
    ])


def _device_name(device: str) -> str:
    if device != "cuda":
        return device
    import torch

    return torch.cuda.get_device_name(0)


def percentiles(seconds: list[float]) -> dict:
    ms = np.sort(np.asarray(seconds) * 1000)
    return {"calls": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minilm", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=384,
                        help="384 serves MiniLM; another width serves a random BERT of that width")
    parser.add_argument("--frontends", default="auto")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy raw profile of the server (all threads) during calls of the first case")
    parser.add_argument("--cases", default="1x10,64x10",
                        help="QUERIESxK per call, comma-separated (e.g. 1x10,64x10,64x1000,1024x10)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cases = [tuple(int(v) for v in case.split("x")) for case in args.cases.split(",")]
    rng = np.random.default_rng(0)
    out: dict = {"date": time.strftime("%Y-%m-%d"), "rows": args.rows, "frontends": args.frontends,
                 "device": _device_name(args.device)}
    with tempfile.TemporaryDirectory() as data_dir:
        proc, address = start(args, data_dir)
        try:
            with SemserveClient(address, timeout=600) as client:
                info = client.create_collection("bench")
                dim = info.dimension
                started = time.perf_counter()

                def messages(batch: int = 4096):
                    for first in range(0, args.rows, batch):
                        n = min(batch, args.rows - first)
                        vectors = rng.standard_normal((n, dim), dtype=np.float32)
                        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                        ids = [f"d{first + i}" for i in range(n)]
                        yield sr.upsert_request("bench", sr.documents(ids, [""] * n, vectors))

                client.upsert_stream(messages())
                out["load_s"] = time.perf_counter() - started
                out["dimension"] = dim
                print("loaded", args.rows, "rows in", round(out["load_s"], 1), "s", flush=True)
                # The floor under any call: a Health.Check round trip on the same client and channel.
                check = health_pb2.HealthCheckRequest()
                floor = []
                for i in range(args.calls + 10):
                    t0 = time.perf_counter()
                    client.health.Check(check, timeout=10)
                    if i >= 10:
                        floor.append(time.perf_counter() - t0)
                out["health_check_round_trip"] = percentiles(floor)
                print("health check:", json.dumps(out["health_check_round_trip"]), flush=True)
                for per_call, top_k in cases:
                    calls = args.calls if per_call == 1 else max(20, args.calls // (10 if per_call <= 64 else 30))
                    queries = rng.standard_normal((calls + 10, per_call, dim), dtype=np.float32)
                    queries /= np.linalg.norm(queries, axis=2, keepdims=True)
                    times = []
                    spy = None
                    if args.profile and (per_call, top_k) == cases[0]:
                        spy = subprocess.Popen(
                            ["py-spy", "record", "--pid", str(proc.pid), "--duration", "4", "--rate", "1000",
                             "--format", "raw", "--threads", "--nonblocking", "--output", str(args.profile)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(0.5)
                        deadline = time.monotonic() + 4
                        while time.monotonic() < deadline:  # calls during the recording, not timed
                            client.search_collection("bench", [list(map(float, q)) for q in queries[0]], top_k=top_k)
                        spy.wait(30)
                    for i, batch in enumerate(queries):
                        vectors = [list(map(float, q)) for q in batch]
                        t0 = time.perf_counter()
                        reply = client.search_collection("bench", vectors, top_k=top_k)
                        if i >= 10:  # warm-up calls are not timed
                            times.append(time.perf_counter() - t0)
                        assert len(reply.results) == per_call and len(reply.results[0].hits) == top_k
                    # The keys of the earlier runs' JSON for k = 10; k named otherwise.
                    key = f"search_{per_call}_per_call" + ("" if top_k == 10 else f"_k{top_k}")
                    out[key] = percentiles(times)
                    server_ms = reply.timing.total_time_us / 1000 if reply.HasField("timing") else None
                    out[key]["last_server_total_ms"] = server_ms
                    print(key, json.dumps(out[key]), flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    print(json.dumps(out))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
