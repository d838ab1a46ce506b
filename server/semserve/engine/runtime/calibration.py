"""Batching that measures its device: throughput over (batch, length) shapes, and the batch
budget and size cap chosen from it.

The right batch size depends on the device: a GPU gains throughput up to tens of thousands of
tokens per forward pass, a 2-core CPU gains nothing past a handful of short texts and only adds
latency and padding (measured: MiniLM served 31–35 single texts/s with 64 in flight at the old
fixed 16,384-token budget, against 52–58 calls/s one at a time). So each model is run on each
device at start over a grid of full (batch, length) batches, within a time budget, and the
smallest batch that reaches nearly the best throughput is taken. Flags still win: a budget or a
size cap given explicitly is kept as given.

Throughput is counted as serving sees it, not as bare forward passes: each batch served also
pays a fixed cost outside its pass (padding, hand-offs between threads, resolving requests) and,
on a machine whose cores also run gRPC, tokenization and clients, the pass's own fixed cost again
(every operator's thread barrier waits for a descheduled thread). Measured on the 2-core CPU: at
the budget bare passes favoured (512 tokens) a 32-text request became four batches and served
9–12% below a 16,384-token budget that the bare passes rated equal. So each shape's time is
charged one more smallest pass (batch 1, shortest length), the fixed cost the device itself
reports, which moves the knee to where that cost is amortised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)

LENGTHS = (16, 32, 64, 128, 256, 512)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# The largest padded batch measured, in tokens.
MAX_SHAPE_TOKENS = 65536
# "Nearly the best": the smallest shape at this share of the best throughput of its length.
KNEE = 0.9
# A row of the grid (one length) stops once this many larger batches in a row gained < 5%...
PLATEAU_POINTS = 2
# ...or one forward pass took longer than this: larger batches only add latency.
MAX_FORWARD_S = 0.5
# Each shape is timed over at least this long (and at least MIN_RUNS forward passes).
MIN_POINT_S = 0.03
MIN_RUNS = 2
CACHE_VERSION = 2


@dataclass(frozen=True)
class Point:
    batch: int
    length: int
    seconds: float  # one forward pass (median)

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.length / self.seconds


@dataclass
class Choice:
    """What the batcher uses, and what it was chosen from."""

    max_batch_tokens: int
    max_batch_size: int
    # Measured throughput at the chosen budget (tokens/s, full batches): the engine's estimate
    # of how fast its queue drains.
    tokens_per_s: float
    best_tokens_per_s: float
    points: list[Point] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False


def measure(forward: Callable[[int, int], None], max_tokens: int, budget_s: float,
            clock: Callable[[], float] = time.perf_counter) -> list[Point]:
    """Time full batches, length by length, growing the batch until throughput stops growing,
    a pass gets slow, or the time budget is spent."""
    deadline = clock() + budget_s
    lengths = [n for n in LENGTHS if n < max_tokens] + [max_tokens]
    points: list[Point] = []
    for length in lengths:
        best = 0.0
        flat = 0
        for batch in BATCHES:
            if batch * length > MAX_SHAPE_TOKENS or clock() >= deadline:
                break
            forward(batch, length)  # warm-up: first use of a shape allocates (and captures a graph)
            runs: list[float] = []
            spent = 0.0
            while len(runs) < MIN_RUNS or spent < MIN_POINT_S:
                started = clock()
                forward(batch, length)
                runs.append(clock() - started)
                spent += runs[-1]
                if spent > MAX_FORWARD_S or clock() >= deadline:
                    break
            runs.sort()
            point = Point(batch, length, max(runs[len(runs) // 2], 1e-9))
            points.append(point)
            if point.tokens_per_s > best * 1.05:
                best, flat = max(best, point.tokens_per_s), 0
            else:
                best = max(best, point.tokens_per_s)
                flat += 1
            if flat >= PLATEAU_POINTS or point.seconds > MAX_FORWARD_S:
                break
        if clock() >= deadline:
            break
    return points


def per_batch_cost(points: Sequence[Point]) -> float:
    """The fixed cost each served batch pays besides its pass: the smallest shape's pass."""
    smallest = min(points, key=lambda p: (p.batch * p.length, p.seconds))
    return smallest.seconds


def served(points: Sequence[Point], per_batch_s: float) -> list[Point]:
    """The points as serving sees them: every pass charged ``per_batch_s`` more."""
    return [Point(p.batch, p.length, p.seconds + per_batch_s) for p in points]


def choose(points: Sequence[Point], max_tokens: int, size_limit: int = BATCHES[-1],
           per_batch_s: float | None = None) -> Choice:
    """The batch budget and size cap from measured points.

    ``per_batch_s`` (default: ``per_batch_cost(points)``) is added to every pass first (see the
    module's docstring); 0 chooses on bare passes.

    Per length, the knee is the smallest batch whose throughput (running maximum over smaller
    batches, which irons out a noisy dip) reaches KNEE of that length's best. The token budget
    is the largest knee in padded tokens, and never below one longest input (so any input fits a
    batch of its own); the size cap is the budget's worth of the shortest inputs, at least the
    shortest length's knee. Where batching does not pay, every knee is a batch of one: the budget
    is one longest input and short inputs still share a batch up to that many tokens.
    """
    if not points:
        raise ValueError("no measurements")
    measured = list(points)
    points = served(measured, per_batch_cost(measured) if per_batch_s is None else per_batch_s)
    by_length: dict[int, list[Point]] = {}
    for p in points:
        by_length.setdefault(p.length, []).append(p)
    knees: dict[int, Point] = {}
    for length, row in by_length.items():
        row = sorted(row, key=lambda p: p.batch)
        best = max(p.tokens_per_s for p in row)
        running = 0.0
        for p in row:
            running = max(running, p.tokens_per_s)
            if running >= KNEE * best:
                knees[length] = p
                break
    budget = max(max(p.batch * p.length for p in knees.values()), max_tokens)
    shortest = min(knees)
    size = min(size_limit, max(knees[shortest].batch, budget // shortest))
    # Throughput at the operating point: the best measured shape within the budget and the cap.
    within = [p for p in points if p.batch * p.length <= budget and p.batch <= size] or list(points)
    return Choice(
        max_batch_tokens=int(budget),
        max_batch_size=int(size),
        tokens_per_s=max(p.tokens_per_s for p in within),
        best_tokens_per_s=max(p.tokens_per_s for p in points),
        points=measured,
    )


def cache_key(model_folder: Path, device: str, device_name: str, dtype: str, cuda_graphs: bool,
              execution: str = "padded") -> str:
    """Measurements are valid for one model folder (its files' sizes and times), one device
    type, one dtype, one way of running batches (padded or unpadded) and one set of library
    versions."""
    import torch
    import transformers

    from semserve import __version__

    folder = model_folder.resolve()
    files = sorted(
        (str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime))
        for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")
    )
    identity = {
        "version": CACHE_VERSION, "folder": str(folder), "files": files, "device": device_name,
        "device_type": device.split(":")[0], "dtype": dtype, "cuda_graphs": cuda_graphs,
        "execution": execution,
        "torch": torch.__version__, "transformers": transformers.__version__, "semserve": __version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def load_cached(path: Path) -> Choice | None:
    try:
        raw = json.loads(path.read_text())
        points = [Point(**p) for p in raw.pop("points")]
        return Choice(**raw, points=points)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save(choice: Choice, path: Path) -> None:
    raw = asdict(choice)
    raw["cached"] = False
    path.parent.mkdir(parents=True, exist_ok=True)
    # One temporary file per process: the engines of a per-device server on GPUs of one kind
    # share a cache file and may save it at the same moment.
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(raw))
    temporary.replace(path)


def device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu {platform.machine()} {platform.processor()} threads={torch.get_num_threads()}"


def calibrate(forward: Callable[[int, int], None], *, max_tokens: int, budget_s: float, cache_file: Path | None,
              size_limit: int = BATCHES[-1]) -> Choice:
    """Measure (or read the cached measurement) and choose."""
    if cache_file is not None:
        cached = load_cached(cache_file)
        if cached is not None:
            cached.cached = True
            cached.seconds = 0.0
            return cached
    started = time.perf_counter()
    points = measure(forward, max_tokens, budget_s)
    choice = choose(points, max_tokens, size_limit)
    choice.seconds = time.perf_counter() - started
    if cache_file is not None:
        try:
            save(choice, cache_file)
        except OSError:
            log.warning("could not cache the batching measurement in %s", cache_file, exc_info=True)
    return choice
