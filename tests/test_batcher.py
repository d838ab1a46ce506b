"""Unit tests of the dynamic batcher with a fake runner: no model, exact control of time.

An input is (label, length): its token ids are ``[label] * length``, and the fake runner's
output row for it is its label, so tests can see which inputs each batch computed.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from semserve.config import BatchingConfig
from semserve.core.errors import DeadlineExpired, QueueFull
from semserve.core.types import TokenBatch
from semserve.engine.batching import DynamicBatcher
from semserve.engine.batching.planner import batch_of_first, split_sorted
from semserve.engine.runtime.worker import DeviceWorker
from semserve.engine.stats import ModelStats


class FakeRunner:
    """Records every batch (as labels); `run` can be held on a gate to keep the worker busy."""

    device = "cpu"

    def __init__(self, compute_s: float = 0.0):
        self.batches: list[list] = []
        self.compute_s = compute_s
        self.gate = threading.Event()
        self.gate.set()

    def prepare(self, parts):
        labels = []
        for request, indexes in parts:
            starts = request.tokens.offsets[indexes]
            labels += request.tokens.ids[starts].tolist()
        return labels

    def run(self, prepared):
        self.gate.wait(10)
        time.sleep(self.compute_s)
        self.batches.append(prepared)
        if "boom" in [LABELS.get(p) for p in prepared]:
            raise RuntimeError("device error")
        return np.asarray(prepared, dtype=np.float32)[:, None]


# Labels as small integers, so they fit token ids; names make tests readable.
LABELS = {1000 + i: name for i, name in enumerate(["busy", "a", "b", "late", "gone", "kept", "boom", "fine", "warm"])}
LABEL = {name: number for number, name in LABELS.items()}


def batch_of(inputs) -> TokenBatch:
    ids = [[LABEL.get(label, label)] * length for label, length in inputs]
    return TokenBatch.from_lists(ids)


def submit(batcher: DynamicBatcher, inputs, deadline=None):
    return batcher.submit(batch_of(inputs), deadline)


def labels(request) -> list:
    return [LABELS.get(int(v), int(v)) for v in request.outputs[:, 0]]


def named(batch: list) -> list:
    return [LABELS.get(x, x) for x in batch]


def make(config: BatchingConfig, runner: FakeRunner | None = None, workers: int = 1):
    runner = runner or FakeRunner()
    stats = ModelStats(model="fake")
    batcher = DynamicBatcher("fake", [DeviceWorker(runner, stats, config.worker_pipeline_depth) for _ in range(workers)],
                             config, stats)
    batcher.start()
    return batcher, runner, stats


def cut(lengths, max_batch_tokens, max_batch_size) -> list[list[int]]:
    values = np.asarray(lengths)
    return [values[p].tolist() for p in split_sorted(values, max_batch_tokens, max_batch_size)]


def test_split_sorted_respects_budget_and_minimises_padding():
    batches = cut((50, 3, 48, 4, 5, 49), max_batch_tokens=160, max_batch_size=8)
    assert batches == [[3, 4, 5], [48, 49, 50]]
    assert all(len(b) * max(b) <= 160 for b in batches)


def test_split_sorted_cuts_big_batches_where_padding_would_grow():
    lengths = [10] * 40 + [30] * 40  # 1,600 real tokens; one batch would pad 80 x 30 = 2,400
    assert cut(lengths, max_batch_tokens=3200, max_batch_size=512) == [[10] * 40, [30] * 40]
    assert len(cut([2, 30], max_batch_tokens=3200, max_batch_size=512)) == 1  # too small for a second pass


def test_split_sorted_gives_an_overlong_item_its_own_batch():
    assert cut([500, 2], max_batch_tokens=100, max_batch_size=8) == [[2], [500]]


def test_split_sorted_respects_size_cap():
    assert [len(b) for b in cut([1] * 10, max_batch_tokens=10_000, max_batch_size=4)] == [4, 4, 2]


def test_batch_of_first_is_the_sorted_batch_holding_the_oldest_input():
    lengths = np.array([40, 3, 41, 4, 39, 5])
    mask = batch_of_first(lengths, max_batch_tokens=130, max_batch_size=8)
    assert sorted(lengths[mask].tolist()) == [39, 40, 41]
    assert mask[0]


def test_concurrent_submissions_coalesce_into_few_batches():
    async def main():
        batcher, runner, stats = make(BatchingConfig(max_queue_delay_us=20_000))
        futures = [submit(batcher, [(n, 5)]) for n in range(64)]
        results = [labels(r)[0] for r in await asyncio.gather(*futures)]
        await batcher.stop()
        return results, runner, stats

    results, runner, stats = asyncio.run(main())
    assert results == list(range(64))
    assert stats.batches == len(runner.batches) <= 2
    assert stats.items == 64


def test_lone_item_on_an_idle_worker_goes_at_once():
    async def main():
        batcher, _, _ = make(BatchingConfig(max_queue_delay_us=500_000))
        t0 = time.monotonic()
        await submit(batcher, [(7, 3)])
        waited = time.monotonic() - t0
        await batcher.stop()
        return waited

    assert asyncio.run(main()) < 0.25


def test_while_a_worker_computes_items_wait_up_to_max_queue_delay_for_companions():
    async def main():
        runner = FakeRunner()
        runner.gate.clear()
        batcher, runner, _ = make(BatchingConfig(max_queue_delay_us=100_000, worker_pipeline_depth=2), runner)
        busy = submit(batcher, [("busy", 1)])
        await asyncio.sleep(0.02)
        t0 = time.monotonic()
        first = submit(batcher, [("a", 1)])
        await asyncio.sleep(0.03)
        second = submit(batcher, [("b", 1)])  # joins "a": its batch waits for companions
        await asyncio.sleep(0.2)
        runner.gate.set()
        await asyncio.gather(busy, first, second)
        await batcher.stop()
        return runner.batches

    batches = asyncio.run(main())
    assert ["a", "b"] in [named(b) for b in batches]


def test_full_batch_goes_without_waiting_for_the_delay():
    async def main():
        batcher, _, _ = make(BatchingConfig(max_queue_delay_us=5_000_000, max_batch_size=8))
        t0 = time.monotonic()
        await submit(batcher, [(n, 3) for n in range(8)])
        waited = time.monotonic() - t0
        await batcher.stop()
        return waited

    assert asyncio.run(main()) < 1.0


def test_batches_are_length_sorted_under_the_token_budget():
    async def main():
        runner = FakeRunner()
        runner.gate.clear()  # hold the worker so everything queues first
        batcher, runner, _ = make(BatchingConfig(max_batch_tokens=64, max_batch_size=64, max_queue_delay_us=0,
                                                 worker_pipeline_depth=1), runner)
        first = submit(batcher, [("warm", 1)])
        await asyncio.sleep(0.05)
        lengths = [30, 2, 31, 3, 29, 4, 2, 30]
        futures = submit(batcher, [(n, n) for n in lengths])
        runner.gate.set()
        await asyncio.gather(first, futures)
        await batcher.stop()
        return runner.batches[1:]

    batches = asyncio.run(main())
    assert sorted(t for b in batches for t in b) == sorted([30, 2, 31, 3, 29, 4, 2, 30])
    for b in batches:
        assert len(b) * max(b) <= 64
    assert [2, 2, 3, 4] in [sorted(b) for b in batches]  # short items travel together instead of padding to 31


def test_queue_bound_refuses_at_once_and_never_partially_admits():
    async def main():
        runner = FakeRunner()
        runner.gate.clear()
        batcher, runner, stats = make(BatchingConfig(max_queue_size=10, max_queue_tokens=1000, max_queue_delay_us=0,
                                                     worker_pipeline_depth=1), runner)
        held = submit(batcher, [("busy", 1)])
        await asyncio.sleep(0.05)  # the worker now holds `held`; the queue is empty
        ok = submit(batcher, [(n, 1) for n in range(8)])
        with pytest.raises(QueueFull):
            submit(batcher, [(n, 1) for n in range(3)])
        assert batcher.queued_items == 8
        with pytest.raises(QueueFull):
            submit(batcher, [(5, 995)])  # the token bound too
        runner.gate.set()
        await asyncio.gather(held, ok)
        await batcher.stop()
        return stats

    stats = asyncio.run(main())
    assert stats.rejected_requests == 2


def test_expired_and_cancelled_items_are_dropped_before_compute():
    async def main():
        runner = FakeRunner()
        runner.gate.clear()
        batcher, runner, stats = make(BatchingConfig(max_queue_delay_us=0, worker_pipeline_depth=1), runner)
        held = submit(batcher, [("busy", 1)])
        await asyncio.sleep(0.05)
        expiring = submit(batcher, [("late", 1)], deadline=time.monotonic() + 0.05)
        cancelled = submit(batcher, [("gone", 1)])
        cancelled.cancel()
        survivor = submit(batcher, [("kept", 1)])
        await asyncio.sleep(0.15)
        runner.gate.set()
        await asyncio.gather(held, survivor)
        with pytest.raises(DeadlineExpired):
            await expiring
        await batcher.stop()
        return runner

    runner = asyncio.run(main())
    computed = [p for b in runner.batches for p in named(b)]
    assert "late" not in computed and "gone" not in computed
    assert computed == ["busy", "kept"]


def test_several_workers_share_the_load():
    async def main():
        runner_a, runner_b = FakeRunner(compute_s=0.05), FakeRunner(compute_s=0.05)
        stats = ModelStats(model="fake2")
        config = BatchingConfig(max_batch_size=4, max_queue_delay_us=0)
        batcher = DynamicBatcher("fake2", [DeviceWorker(runner_a, stats), DeviceWorker(runner_b, stats)], config, stats)
        batcher.start()
        await submit(batcher, [(n, 2) for n in range(32)])
        await batcher.stop()
        return runner_a, runner_b

    a, b = asyncio.run(main())
    assert a.batches and b.batches
    assert sum(len(x) for x in a.batches + b.batches) == 32


def test_a_failing_batch_fails_its_items_and_the_batcher_goes_on():
    async def main():
        batcher, _, _ = make(BatchingConfig(max_queue_delay_us=0, max_batch_size=1))
        bad = submit(batcher, [("boom", 1)])
        with pytest.raises(RuntimeError, match="device error"):
            await bad
        good = labels(await submit(batcher, [("fine", 1)]))[0]
        await batcher.stop()
        return good

    assert asyncio.run(main()) == "fine"


def test_a_request_whose_estimated_wait_exceeds_max_queue_time_is_refused_at_once():
    async def main():
        runner = FakeRunner()
        runner.gate.clear()
        batcher, runner, stats = make(BatchingConfig(max_queue_time_ms=100, max_queue_delay_us=0,
                                                     worker_pipeline_depth=1), runner)
        batcher.tokens_per_s = 1000.0  # as measured: 100 ms of queue is 100 tokens
        held = submit(batcher, [("busy", 30)])
        await asyncio.sleep(0.05)  # the worker holds it (30 ms of work in flight); the queue is empty
        first = submit(batcher, [(1, 60)])  # 60 ms of work: admitted
        started = time.monotonic()
        with pytest.raises(QueueFull, match="would wait about 150 ms"):
            submit(batcher, [(2, 60)])  # 30 in flight + 60 queued + 60 = 150 ms > 100 ms
        refused_in = time.monotonic() - started
        batcher.tokens_per_s = 0.0  # no measurement: only the size bounds apply
        third = submit(batcher, [(3, 60)])
        runner.gate.set()
        await asyncio.gather(held, first, third)
        await batcher.stop()
        return stats, refused_in

    stats, refused_in = asyncio.run(main())
    assert stats.rejected_requests == 1 and refused_in < 0.01


def test_a_queue_head_older_than_the_bound_refuses_whatever_the_rate_promises():
    """The rate estimates lag when compute slows under load; the head's age does not."""
    async def main():
        runner = FakeRunner()
        runner.gate.clear()
        batcher, runner, stats = make(BatchingConfig(max_queue_time_ms=50, max_queue_delay_us=0,
                                                     worker_pipeline_depth=1), runner)
        batcher.tokens_per_s = 1e9  # a rate that promises no wait at all
        held = submit(batcher, [("busy", 1)])
        await asyncio.sleep(0.02)
        waiting = submit(batcher, [(1, 1)])  # queued behind the held batch
        second = submit(batcher, [(2, 1)])  # the head is young: admitted
        await asyncio.sleep(0.08)  # the head has now waited 80 ms > 50 ms
        with pytest.raises(QueueFull, match=r"would wait about \d+ ms"):
            submit(batcher, [(3, 1)])
        runner.gate.set()
        await asyncio.gather(held, waiting, second)
        await batcher.stop()
        return stats

    assert asyncio.run(main()).rejected_requests == 1


def test_an_empty_queue_admits_even_a_request_longer_than_the_bound():
    async def main():
        batcher, _, _ = make(BatchingConfig(max_queue_time_ms=1, max_queue_delay_us=0))
        batcher.tokens_per_s = 10.0
        result = await submit(batcher, [(1, 50)])  # 5 s at the measured rate, but nothing is ahead
        await batcher.stop()
        return labels(result)

    assert asyncio.run(main()) == [1]


def test_admission_counts_on_the_rate_the_queue_really_drains_at():
    """Calibration promised far more than the devices deliver in serving: once batches are seen
    leaving a backlogged queue, the wait estimate uses that slower rate and refuses early."""
    async def main():
        runner = FakeRunner(compute_s=0.05)  # 10 tokens per 50 ms batch: 200 tokens/s
        batcher, runner, stats = make(BatchingConfig(max_queue_time_ms=300, max_queue_delay_us=0,
                                                     max_batch_tokens=10, max_batch_size=10,
                                                     worker_pipeline_depth=1), runner)
        batcher.tokens_per_s = 1_000_000.0  # the calibrated figure: 300 ms would be 300k tokens
        backlog = [submit(batcher, [(i, 10)]) for i in range(12)]  # 120 tokens, under 1 ms as promised
        await asyncio.sleep(0.3)  # several batches leave the backlogged queue
        observed = batcher.observed_tokens_per_s
        queued = batcher.estimated_wait_ms()
        refused = None
        try:
            for i in range(100):
                submit(batcher, [(100 + i, 10)])
        except QueueFull as exc:
            refused = str(exc)
        await asyncio.gather(*backlog, return_exceptions=True)
        await batcher.stop()
        return observed, queued, refused

    observed, queued, refused = asyncio.run(main())
    assert 100 < observed < 400, observed  # ~200 tokens/s
    assert queued > 50  # ms, at the observed rate
    assert refused is not None and "would wait about" in refused


class LaunchingRunner(FakeRunner):
    """A runner that launches asynchronously, as on a GPU: ``launch`` returns at once and
    ``collect`` waits until the batch is released, so a test sees the next batch launched
    while the one before it is still "on the device"."""

    def __init__(self):
        super().__init__()
        self.launched: list[list] = []
        self.released: dict[int, threading.Event] = {}
        self.collected: list[list] = []

    def launch(self, prepared):
        self.launched.append(prepared)
        release = self.released.setdefault(len(self.launched) - 1, threading.Event())
        return len(self.launched) - 1, prepared, release

    def collect(self, handle):
        index, prepared, release = handle
        release.wait(10)
        self.collected.append(prepared)
        if "boom" in [LABELS.get(p) for p in prepared]:
            raise RuntimeError("device error")
        return np.asarray(prepared, dtype=np.float32)[:, None]


async def launched(runner: LaunchingRunner, count: int) -> None:
    for _ in range(200):
        if len(runner.launched) >= count:
            return
        await asyncio.sleep(0.005)


def test_a_launching_runner_gets_the_next_batch_before_the_first_is_collected():
    async def main():
        runner = LaunchingRunner()
        batcher, _, stats = make(BatchingConfig(max_queue_delay_us=0, max_batch_size=1, worker_pipeline_depth=3),
                                 runner)
        first = submit(batcher, [("a", 3)])
        second = submit(batcher, [("b", 3)])
        await launched(runner, 2)
        assert [named(b) for b in runner.launched] == [["a"], ["b"]]
        assert runner.collected == []  # both launched, neither waited for
        runner.released[0].set()
        assert labels(await first) == ["a"]
        assert not second.done()
        runner.released[1].set()
        assert labels(await second) == ["b"]
        await batcher.stop()

    asyncio.run(main())


def test_a_batch_that_fails_on_the_device_fails_its_requests_and_not_the_next():
    async def main():
        runner = LaunchingRunner()
        batcher, _, _ = make(BatchingConfig(max_queue_delay_us=0, max_batch_size=1, worker_pipeline_depth=3), runner)
        bad = submit(batcher, [("boom", 3)])
        good = submit(batcher, [("fine", 3)])
        await launched(runner, 2)
        runner.released[0].set()
        runner.released[1].set()
        with pytest.raises(RuntimeError, match="device error"):
            await bad
        assert labels(await good) == ["fine"]
        await batcher.stop()

    asyncio.run(main())
