"""Single-text EmbedStream on a GPU server (not part of `make test`): the same 32 streams of 64
messages in flight over 8 connections (one per client process) and over 32 (one per stream),
alternated against one server with 8 front ends. Front ends share connections, not calls
(SO_REUSEPORT), so this shows how much of a stream figure is the load's spread.

    OUT=/tmp/out python3 tests/perf/bench_stream_connections.py   # needs .models/minilm
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "perf"), str(ROOT / "client"), str(ROOT / "server")]

from semserve_client.bench import LoadSpec, run_load  # noqa: E402


def main() -> None:
    import bench_gpu

    cmd = [sys.executable, "-m", "semserve", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cuda",
           "--frontends", "8", "--dtype", "float16", "--metrics-port", "0", "--max-batch-tokens", "32768",
           "--max-batch-size", "512", "--max-queue-delay-ms", "2", "--tokenizer-threads", "4",
           "--max-queue-size", "65536", "--max-queue-tokens", "20000000",
           "--encoder", f"minilm={ROOT / '.models' / 'minilm'}"]
    proc, address = bench_gpu.launch(cmd)
    out: dict = {"command": " ".join(cmd)}
    try:
        for label, channels in (("stream_8conn_a", 1), ("stream_32conn_a", 0), ("stream_8conn_b", 1),
                                ("stream_32conn_b", 0)):
            spec = LoadSpec(target=address, model="minilm", mode="embed-stream", concurrency=32, request_size=1,
                            window=64, duration_s=6, warmup_s=2, channels=channels)
            meter = bench_gpu.UsageMeter(spec.warmup_s + 2.5, max(1.0, spec.duration_s - 3.5))
            meter.start()
            result = run_load(spec, processes=8)
            meter.join()
            result["usage"] = meter.summary()
            out[label] = result
            print(label, json.dumps({k: result.get(k) for k in ("items_per_s", "p50_ms", "p99_ms", "usage")}),
                  flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    Path(os.environ.get("OUT", ".")).joinpath("stream_connections.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
