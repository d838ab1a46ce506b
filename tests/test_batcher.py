"""Unit tests of the dynamic batcher with a fake runner: no model, exact control of time."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from semserve.batching import DeadlineExpired, DynamicBatcher, QueueFull
from semserve.batching.planner import padded_cost, split_sorted
from semserve.batching.items import WorkItem
from semserve.config import BatchingConfig
from semserve.runtime.worker import DeviceWorker
from semserve.stats import ModelStats


class FakeRunner:
    """Records every batch; `run` can be held on a gate to keep the worker busy."""

    device = "cpu"

    def __init__(self, compute_s: float = 0.0):
        self.batches: list[list] = []
        self.compute_s = compute_s
        self.gate = threading.Event()
        self.gate.set()

    def prepare(self, payloads):
        return list(payloads)

    def run(self, prepared):
        self.gate.wait(10)
        time.sleep(self.compute_s)
        self.batches.append(prepared)
        return [("out", p) for p in prepared]


def make(config: BatchingConfig, runner: FakeRunner | None = None, workers: int = 1):
    runner = runner or FakeRunner()
    stats = ModelStats(model="fake")
    batcher = DynamicBatcher("fake", [DeviceWorker(runner, stats, config.worker_pipeline_depth) for _ in range(workers)],
                             config, stats)
    batcher.start()
    return batcher, runner, stats


def item(tokens: int) -> WorkItem:
    return WorkItem(payload=tokens, tokens=tokens, group=None)  # type: ignore[arg-type]


def test_split_sorted_respects_budget_and_minimises_padding():
    items = [item(t) for t in (50, 3, 48, 4, 5, 49)]
    batches = split_sorted(items, max_batch_tokens=160, max_batch_size=8)
    assert [[i.tokens for i in b] for b in batches] == [[3, 4, 5], [48, 49, 50]]
    assert all(padded_cost(b) <= 160 for b in batches)


def test_split_sorted_cuts_big_batches_where_padding_would_grow():
    lengths = [10] * 40 + [30] * 40  # 1,600 real tokens; one batch would pad 80 x 30 = 2,400
    batches = split_sorted([item(t) for t in lengths], max_batch_tokens=3200, max_batch_size=512)
    assert [[i.tokens for i in b] for b in batches] == [[10] * 40, [30] * 40]
    small = split_sorted([item(t) for t in [2, 30]], max_batch_tokens=3200, max_batch_size=512)
    assert len(small) == 1  # too small to be worth a second forward pass


def test_split_sorted_gives_an_overlong_item_its_own_batch():
    batches = split_sorted([item(500), item(2)], max_batch_tokens=100, max_batch_size=8)
    assert [[i.tokens for i in b] for b in batches] == [[2], [500]]


def test_split_sorted_respects_size_cap():
    batches = split_sorted([item(1) for _ in range(10)], max_batch_tokens=10_000, max_batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_concurrent_submissions_coalesce_into_few_batches():
    async def main():
        batcher, runner, stats = make(BatchingConfig(max_queue_delay_us=20_000))
        futures = [batcher.submit([(n, 5)]) for n in range(64)]
        results = [g.values[0] for g in await asyncio.gather(*futures)]
        await batcher.stop()
        return results, runner, stats

    results, runner, stats = asyncio.run(main())
    assert results == [("out", n) for n in range(64)]
    assert stats.batches == len(runner.batches) <= 2
    assert stats.items == 64


def test_lone_item_on_an_idle_worker_goes_at_once():
    async def main():
        batcher, _, _ = make(BatchingConfig(max_queue_delay_us=500_000))
        t0 = time.monotonic()
        await batcher.submit([("x", 3)])
        waited = time.monotonic() - t0
        await batcher.stop()
        return waited

    assert asyncio.run(main()) < 0.25


def test_while_a_worker_computes_items_wait_up_to_max_queue_delay_for_companions():
    async def main():
        runner = FakeRunner()
        runner.gate.clear()
        batcher, runner, _ = make(BatchingConfig(max_queue_delay_us=100_000, worker_pipeline_depth=2), runner)
        busy = batcher.submit([("busy", 1)])
        await asyncio.sleep(0.02)
        t0 = time.monotonic()
        first = batcher.submit([("a", 1)])
        await asyncio.sleep(0.03)
        second = batcher.submit([("b", 1)])  # joins "a": its batch waits for companions
        await asyncio.sleep(0.2)
        runner.gate.set()
        await asyncio.gather(busy, first, second)
        await batcher.stop()
        return runner.batches

    batches = asyncio.run(main())
    assert ["a", "b"] in batches


def test_full_batch_goes_without_waiting_for_the_delay():
    async def main():
        batcher, _, _ = make(BatchingConfig(max_queue_delay_us=5_000_000, max_batch_size=8))
        t0 = time.monotonic()
        await batcher.submit([(n, 3) for n in range(8)])
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
        first = batcher.submit([("warm", 1)])
        await asyncio.sleep(0.05)
        lengths = [30, 2, 31, 3, 29, 4, 2, 30]
        futures = batcher.submit([(n, n) for n in lengths])
        runner.gate.set()
        await asyncio.gather(first, futures)
        await batcher.stop()
        return runner.batches[1:]

    batches = asyncio.run(main())
    assert sorted(t for b in batches for t in b) == sorted([30, 2, 31, 3, 29, 4, 2, 30])
    for b in batches:
        assert len(b) * max(b) <= 64
    assert [2, 2, 3, 4] in batches  # short items travel together instead of padding to 31


def test_queue_bound_refuses_at_once_and_never_partially_admits():
    async def main():
        runner = FakeRunner()
        runner.gate.clear()
        batcher, runner, stats = make(BatchingConfig(max_queue_size=10, max_queue_tokens=1000, max_queue_delay_us=0,
                                                     worker_pipeline_depth=1), runner)
        held = batcher.submit([("busy", 1)])
        await asyncio.sleep(0.05)  # the worker now holds `held`; the queue is empty
        ok = batcher.submit([(n, 1) for n in range(8)])
        with pytest.raises(QueueFull):
            batcher.submit([(n, 1) for n in range(3)])
        assert batcher.queued_items == 8
        with pytest.raises(QueueFull):
            batcher.submit([("long", 995)])  # the token bound too
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
        held = batcher.submit([("busy", 1)])
        await asyncio.sleep(0.05)
        expiring = batcher.submit([("late", 1)], deadline=time.monotonic() + 0.05)
        cancelled = batcher.submit([("gone", 1)])
        cancelled.cancel()
        survivor = batcher.submit([("kept", 1)])
        await asyncio.sleep(0.15)
        runner.gate.set()
        await asyncio.gather(held, survivor)
        with pytest.raises(DeadlineExpired):
            await expiring
        await batcher.stop()
        return runner

    runner = asyncio.run(main())
    computed = [p for b in runner.batches for p in b]
    assert "late" not in computed and "gone" not in computed
    assert computed == ["busy", "kept"]


def test_several_workers_share_the_load():
    async def main():
        runner_a, runner_b = FakeRunner(compute_s=0.05), FakeRunner(compute_s=0.05)
        stats = ModelStats(model="fake2")
        config = BatchingConfig(max_batch_size=4, max_queue_delay_us=0)
        batcher = DynamicBatcher("fake2", [DeviceWorker(runner_a, stats), DeviceWorker(runner_b, stats)], config, stats)
        batcher.start()
        await batcher.submit([(n, 2) for n in range(32)])
        await batcher.stop()
        return runner_a, runner_b

    a, b = asyncio.run(main())
    assert a.batches and b.batches
    assert sum(len(x) for x in a.batches + b.batches) == 32


def test_a_failing_batch_fails_its_items_and_the_batcher_goes_on():
    class Flaky(FakeRunner):
        def run(self, prepared):
            if "boom" in prepared:
                raise RuntimeError("device error")
            return super().run(prepared)

    async def main():
        batcher, _, _ = make(BatchingConfig(max_queue_delay_us=0, max_batch_size=1), Flaky())
        bad = batcher.submit([("boom", 1)])
        with pytest.raises(RuntimeError, match="device error"):
            await bad
        good = (await batcher.submit([("fine", 1)])).values[0]
        await batcher.stop()
        return good

    assert asyncio.run(main()) == ("out", "fine")
