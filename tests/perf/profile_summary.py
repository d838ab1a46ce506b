"""Summarise a py-spy raw profile of a semserve server (``--format raw --threads --subprocesses``,
as ``bench_gpu.py --profile-dir`` records them): the busy cores of each process and thread, then the
hottest frames of the chosen kinds of process (engine, frontend, super).

    python tests/perf/profile_summary.py PROFILE.txt SECONDS [engine] [frontend]

SECONDS is the recording's length; busy cores are samples / (250 Hz x SECONDS). py-spy samples
every process of the tree from one process and drops samples it cannot take in time, so the
figures are lower bounds; /proc's accounting (the bench's ``usage``) is the one to quote.
"""

from __future__ import annotations

import collections
import sys

RATE_HZ = 250


def main(path: str, seconds: float, kinds: list[str]) -> None:
    threads: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in open(path):
        line = line.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        i = max(j for j, f in enumerate(frames) if f.startswith("process "))
        process = frames[i]
        kind = "engine" if "engine_main" in process else "frontend" if "frontend_main" in process else "super"
        thread = frames[i + 1] if len(frames) > i + 1 else ""
        threads[(kind, process.split(":")[0], thread[:50])] += n
        total[kind] += n
        rest = frames[i + 2:]
        if rest:
            own[kind][rest[-1][:120]] += n
        for frame in set(rest):
            inclusive[kind][frame[:120]] += n
    print({k: round(v / RATE_HZ / seconds, 2) for k, v in total.items()}, "busy cores (lower bound)")
    for (kind, pid, thread), n in threads.most_common(25):
        print(" ", kind, pid, thread, round(n / RATE_HZ / seconds, 2))
    for kind in kinds:
        print("==", kind, "own time")
        for frame, n in own[kind].most_common(30):
            print(f"{n / total[kind] * 100:5.1f}% {frame}")
        print("==", kind, "inclusive")
        for frame, n in inclusive[kind].most_common(45):
            print(f"{n / total[kind] * 100:5.1f}% {frame}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3:])
