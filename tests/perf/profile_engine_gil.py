"""Where the engine process's Python time goes under single-text load (not part of `make test`).

Serves MiniLM with ``--frontends N``, drives single-text unary Embed (256 in flight) and then
single-text EmbedStream (32 streams, 64 messages in flight each) from 8 client processes, and
records py-spy profiles of the engine process alone during each: ``--gil`` samples only the
thread holding the GIL (what the engine's one GIL is spent on), ``--idle`` every thread. Then
prints, per load, the GIL's share by thread and the hottest frames of the event-loop thread.

    python3 tests/perf/profile_engine_gil.py --minilm .models/minilm --out-dir DIR

Run on the GPU machine with py-spy installed; results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import bench_gpu  # noqa: E402  (same folder: the server launcher and import paths)
from semserve_client.bench import LoadSpec, run_load  # noqa: E402

LOADS = (
    ("unary", dict(mode="embed", concurrency=256, request_size=1)),
    ("stream", dict(mode="embed-stream", concurrency=32, request_size=1, window=64)),
)


def engine_pid(supervisor: int) -> int:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return next(int(c) for c in children if b"engine_main" in Path(f"/proc/{c}/cmdline").read_bytes())


def summarise(path: Path, top: int = 25) -> dict:
    """GIL samples by thread, and the event-loop thread's samples by what ``Handle._run`` ran."""
    threads: collections.Counter = collections.Counter()
    loop: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames, n = stack.split(";"), int(count)
        threads[frames[0].split(":", 1)[-1].strip()] += n
        if "MainThread" in frames[0]:
            ran = [i for i, f in enumerate(frames) if f.startswith("Handle._run")]
            below = frames[ran[0] + 1] if ran and ran[0] + 1 < len(frames) else frames[-1]
            loop[below[:100]] += n
    return {"by_thread": dict(threads.most_common()), "event_loop": dict(loop.most_common(top))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", type=Path, required=True)
    parser.add_argument("--frontends", default="8")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=5, help="length of each py-spy recording")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    proc, address = bench_gpu.launch([
        sys.executable, "-m", "semserve", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cuda",
        "--frontends", args.frontends, "--dtype", "float16", "--metrics-port", "0", "--max-queue-size", "65536",
        "--max-queue-tokens", "20000000", "--encoder", f"minilm={args.minilm}",
    ])
    report: dict = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    try:
        engine = engine_pid(proc.pid)
        for name, load in LOADS:
            result: dict = {}
            spec = LoadSpec(target=address, duration_s=4 + 2 * args.seconds + 6, warmup_s=2, model="minilm", **load)
            clients = threading.Thread(target=lambda: result.update(run_load(spec, processes=8)))
            clients.start()
            time.sleep(6)  # clients started and warmed up
            for flag in ("gil", "idle"):
                path = args.out_dir / f"{name}-{flag}.txt"
                subprocess.run(["py-spy", "record", "--pid", str(engine), "--duration", str(args.seconds),
                                "--rate", "500", "--format", "raw", "--threads", "--nonblocking", f"--{flag}",
                                "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            clients.join()
            report[name] = {"items_per_s": result.get("items_per_s"), "p50_ms": result.get("p50_ms"),
                            "gil": summarise(args.out_dir / f"{name}-gil.txt"),
                            "idle_samples_per_thread": max(summarise(args.out_dir / f"{name}-idle.txt")["by_thread"].values())}
            print(name, json.dumps(report[name], indent=1), flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    (args.out_dir / "summary.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
