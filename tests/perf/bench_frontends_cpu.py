"""CPU benchmark (not part of `make test`): one process against front-end processes.

The same tiny test encoder (tests/model_factory.py) is served with ``--frontends 0`` (everything
in one process), 1 and 2, one after the other in one run, and driven by ``semserve-client
bench`` with single-text unary calls, single-text EmbedStream and 32-text calls. The tiny model
makes the forward pass cheap, so the figures show what the serving path itself sustains.

    PYTHONPATH=server:client:tests .venv/bin/python tests/perf/bench_frontends_cpu.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_factory import make_tiny_st_encoder  # noqa: E402
from semserve_client.bench import LoadSpec, run_load  # noqa: E402

WORKLOADS = (
    ("unary, 1 text", dict(mode="embed", request_size=1, concurrency=64)),
    ("stream, 1 text", dict(mode="embed-stream", request_size=1, concurrency=8, window=16)),
    ("unary, 32 texts", dict(mode="embed", request_size=32, concurrency=16)),
)


def start(folder: Path, frontends: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "semserve", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
         "--metrics-port", "0", "--encoder", f"tiny={folder}", "--frontends", str(frontends), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"listening on (\S+):(\d+)", line)
        if match:
            return proc, f"127.0.0.1:{match.group(2)}"
    proc.kill()
    raise RuntimeError("server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_pid(proc: subprocess.Popen, frontends: int) -> int:
    """The process that computes: the server itself with --frontends 0, else its engine child."""
    if frontends == 0:
        return proc.pid
    for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
        if b"engine_main" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise RuntimeError("no engine process")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontends", default="0,1,2", help="front-end counts to compare, in one run")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--server-args", default="", help="extra `semserve serve` flags, e.g. batching overrides")
    args = parser.parse_args()
    folder = make_tiny_st_encoder(Path(tempfile.mkdtemp()) / "tiny")
    rows = []
    for frontends in [int(x) for x in args.frontends.split(",")]:
        proc, address = start(folder, frontends, args.server_args.split())
        try:
            engine = engine_pid(proc, frontends)
            for name, workload in WORKLOADS:
                cpu_before = cpu_seconds(engine)
                result = run_load(
                    LoadSpec(target=address, duration_s=args.duration, warmup_s=args.warmup, model="tiny", **workload),
                    processes=args.client_processes,
                )
                # CPU the computing process spent per request over the whole load (warm-up included,
                # so divided by every request sent, counted or not): its ceiling is 1 / this per core.
                sent = result["requests"] * (args.duration + args.warmup) / args.duration
                result["engine_cpu_us_per_request"] = round((cpu_seconds(engine) - cpu_before) / max(1, sent) * 1e6, 1)
                rows.append({"frontends": frontends, "workload": name, **result})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"\n{platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| workload | " + " | ".join(f"frontends {f}" for f in args.frontends.split(",")) + " |")
    print("|---|" + "---|" * len(args.frontends.split(",")))
    for name, _ in WORKLOADS:
        cells = [f"{r['items_per_s']:.0f} texts/s (p50 {r['p50_ms']:.1f} ms; engine {r['engine_cpu_us_per_request']:.0f} µs CPU/request)"
                 for r in rows if r["workload"] == name]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
