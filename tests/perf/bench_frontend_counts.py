"""GPU benchmark (not part of `make test`): front-end counts compared under h2load, with the CPU
of every server thread, to tell which process limits single-text calls.

One server per count in ``--counts`` (MiniLM, the bench's settings), in the order given (repeat
a count to alternate, e.g. ``8,14,8,14``; ``14+max-queue-delay-ms=0.5`` or ``14+no-cuda-graphs``
adds that flag to the server's command line), each driven by h2load (tests/perf/h2load_load.py) with
every load in ``--loads``:

    unary          single-text Embed, 64 connections x 4 calls in flight
    unary@CxM      the same over C connections with M calls each
    unary32        32-text Embed, 256 in flight
    stream         EmbedStream, 64 connections x one stream of 256 single-text messages
    stream@CxM     the same over C connections with M streams each
    lone           one single-text call at a time

Beside h2load's figures, each load records the user and system CPU of every front end's main
thread (its event loop, where gRPC-Python's call handling runs) and of the engine's threads,
from /proc over the measured seconds: a main thread near one core is a saturated front end.

    python3 tests/perf/bench_frontend_counts.py --minilm .models/minilm --h2load PATH \\
        --counts 8,14,8,14 --loads unary,unary@256x1,stream,stream@64x1,lone --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench_gpu
from semserve_client.bench import synthetic_texts


def thread_cpu(pid: int) -> dict[int, tuple[int, int]]:
    """User and system clock ticks of each thread of a process."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[int(tid)] = (int(fields[11]), int(fields[12]))
    return ticks


def server_processes(root: int) -> dict[int, str]:
    kinds = {}
    for child in Path(f"/proc/{root}/task/{root}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        kinds[int(child)] = ("engine" if b"engine_main" in cmdline else
                             "frontend" if b"frontend_main" in cmdline else "other")
    return kinds


def sample_threads(root: int, delay_s: float, seconds: float, into: dict) -> None:
    """Cores used over ``seconds`` (after ``delay_s``): each process's main thread (user, system)
    and its four busiest other threads."""
    time.sleep(delay_s)
    processes = server_processes(root)
    before = {pid: thread_cpu(pid) for pid in processes}
    started = time.monotonic()
    time.sleep(seconds)
    after = {pid: thread_cpu(pid) for pid in processes}
    elapsed, hz = time.monotonic() - started, os.sysconf("SC_CLK_TCK")
    for pid, kind in processes.items():
        zero = (0, 0)
        main0, main1 = before[pid].get(pid, zero), after[pid].get(pid, zero)
        others = sorted(((sum(after[pid][t]) - sum(before[pid].get(t, zero))) / hz / elapsed
                         for t in after[pid] if t != pid), reverse=True)
        into.setdefault(kind, []).append({
            "main_user": round((main1[0] - main0[0]) / hz / elapsed, 2),
            "main_sys": round((main1[1] - main0[1]) / hz / elapsed, 2),
            "others": [round(x, 2) for x in others[:4]],
        })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", type=Path, required=True)
    parser.add_argument("--h2load", required=True, help="h2load binary (Debian's nghttp2-client)")
    parser.add_argument("--counts", default="8,14,8,14", help="front-end counts, one server each, in this order")
    parser.add_argument("--loads", default="unary,unary@256x1,stream,stream@64x1,lone")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="cpu runs it through on a machine without a GPU")
    given = parser.parse_args()
    # The settings bench_gpu.py serves with.
    args = argparse.Namespace(max_batch_tokens=32768, max_batch_size=512, max_queue_delay_ms=2.0,
                              tokenizer_threads=4, no_cuda_graphs=False, no_unpadded=False, warmup=given.warmup,
                              duration=given.duration, profile_dir=None, py_spy="py-spy", py_spy_native=False,
                              h2load=given.h2load)
    work = Path(tempfile.mkdtemp())
    reranker = bench_gpu.make_random_folder(work / "ce", given.minilm, "cross_encoder", hidden_size=384,
                                            num_hidden_layers=2, num_attention_heads=12, intermediate_size=1536,
                                            num_labels=1)
    texts = synthetic_texts(20000, seed=1)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "loads": []}
    for server in given.counts.split(","):
        count, *flags = server.split("+")
        extra = tuple(part for flag in flags for part in ("--" + flag.partition("=")[0], flag.partition("=")[2])
                      if part)  # a flag without "=value" is a switch
        proc, address = bench_gpu.start_server(args, {"minilm": given.minilm}, reranker, frontends=count,
                                             device=given.device, extra=extra)
        try:
            for load in given.loads.split(","):
                kind, _, shape = load.partition("@")
                connections, _, streams = shape.partition("x")
                bench_gpu.log(f"--frontends {server}: {load}")
                threads: dict = {}
                sampler = threading.Thread(target=sample_threads,
                                           args=(proc.pid, given.warmup + 1.5, given.duration - 3, threads))
                sampler.start()
                result = bench_gpu.h2load_load(
                    address, args, "stream" if kind == "stream" else "unary", texts,
                    per_call=32 if kind == "unary32" else 0, lone=kind == "lone",
                    connections=int(connections or 0), streams=int(streams or 0))
                sampler.join()
                result.update(frontends=int(count), server_flags=list(extra), load=load, threads=threads)
                bench_gpu.log("   threads:", json.dumps(threads))
                results["loads"].append(result)
                given.out.write_text(json.dumps(results, indent=1))
        finally:
            proc.terminate()
            proc.wait(60)
    for r in results["loads"]:
        mains = [t["main_user"] + t["main_sys"] for t in r["threads"].get("frontend", [])]
        print(f"{r['frontends']:3d} {' '.join(r['server_flags']):28s} {r['load']:14s} {r['items_per_s']:9.1f} texts/s p50 {r.get('p50_ms')} "
              f"p99 {r.get('p99_ms')} whole {r['answers_whole']} front-end loops {min(mains, default=0):.2f}-"
              f"{max(mains, default=0):.2f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
