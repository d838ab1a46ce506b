"""Batching that measures its device: the choice from synthetic throughput tables, the
measurement's stopping rules, and a real server that reports (and caches) what it chose."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from conftest import server_config, start_server
from semserve.config import ModelSpec, SearchConfig
from semserve.engine.runtime.calibration import BATCHES, LENGTHS, Point, choose, measure
from semserve_client import SemserveClient

MAX_TOKENS = 256


def table(seconds_for, noise: float = 0.0, seed: int = 0) -> list[Point]:
    rng = random.Random(seed)
    lengths = [n for n in LENGTHS if n < MAX_TOKENS] + [MAX_TOKENS]
    return [
        Point(b, n, seconds_for(b, n) * (1 + rng.uniform(-noise, noise)))
        for n in lengths for b in BATCHES if b * n <= 65536
    ]


def gpu_like(batch: int, length: int) -> float:
    """A fixed 2 ms per pass (launches) plus 2M tokens/s of compute: throughput grows for long."""
    return 0.002 + batch * length / 2e6


def cpu_like(batch: int, length: int) -> float:
    """No fixed cost to amortise: every token costs the same, batching gains nothing."""
    return batch * length / 5e3


def test_a_device_that_gains_from_batching_gets_a_large_budget():
    choice = choose(table(gpu_like), MAX_TOKENS)
    # 90% of the asymptote needs ~36k tokens per pass: the budget lands in the tens of thousands
    assert 16384 <= choice.max_batch_tokens <= 65536
    assert choice.max_batch_size == 512
    assert choice.tokens_per_s >= 0.85 * choice.best_tokens_per_s


def test_a_device_where_batching_does_not_pay_gets_batches_of_about_one_long_input():
    choice = choose(table(cpu_like), MAX_TOKENS)
    assert choice.max_batch_tokens == MAX_TOKENS  # one longest input still fits
    assert choice.max_batch_size == MAX_TOKENS // 16  # short inputs share that budget


def test_noise_moves_the_choice_little():
    clean = choose(table(gpu_like), MAX_TOKENS)
    for seed in range(5):
        noisy = choose(table(gpu_like, noise=0.05, seed=seed), MAX_TOKENS)
        assert clean.max_batch_tokens / 4 <= noisy.max_batch_tokens <= clean.max_batch_tokens * 4
        assert noisy.tokens_per_s >= 0.8 * clean.tokens_per_s


def test_a_dip_at_one_batch_size_does_not_cut_the_budget_short():
    def dipping(batch: int, length: int) -> float:
        return gpu_like(batch, length) * (3.0 if batch == 8 else 1.0)

    assert choose(table(dipping), MAX_TOKENS).max_batch_tokens == choose(table(gpu_like), MAX_TOKENS).max_batch_tokens


class FakeDevice:
    """A forward pass that advances a fake clock by the table's time."""

    def __init__(self, seconds_for):
        self.now = 0.0
        self.seconds_for = seconds_for
        self.shapes: list[tuple[int, int]] = []

    def forward(self, batch: int, length: int) -> None:
        self.shapes.append((batch, length))
        self.now += self.seconds_for(batch, length)

    def clock(self) -> float:
        return self.now


def test_measurement_stops_a_length_once_throughput_is_flat():
    device = FakeDevice(cpu_like)
    points = measure(device.forward, MAX_TOKENS, budget_s=1e6, clock=device.clock)
    for length in {p.length for p in points}:
        row = [p for p in points if p.length == length]
        assert len(row) <= 3  # 1, 2, 4: two points in a row without a 5% gain end the row


def test_measurement_respects_its_time_budget():
    device = FakeDevice(gpu_like)
    measure(device.forward, MAX_TOKENS, budget_s=2.0, clock=device.clock)
    slowest = max(gpu_like(b, n) for b, n in device.shapes)
    assert device.now <= 2.0 + 4 * slowest


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from model_factory import make_tiny_st_encoder

    return make_tiny_st_encoder(tmp_path_factory.mktemp("tiny") / "tiny")


def batching_of(address: str):
    with SemserveClient(address) as c:
        return c.info().models[0].batching


def test_a_server_reports_the_measured_choice_and_caches_it(tiny_folder, tmp_path):
    config = server_config(encoders=[ModelSpec("tiny", tiny_folder, "encoder")], policy="measured",
                           calibration_seconds=1.0, search=SearchConfig(data_dir=tmp_path))
    first = start_server(config)
    try:
        measured = batching_of(first.address)
    finally:
        first.stop()
    assert measured.policy == "measured" and not measured.from_cache
    assert measured.max_batch_tokens >= 64 and measured.max_batch_size >= 1
    assert measured.measured_tokens_per_second > 0 and measured.calibration_seconds > 0
    assert list((tmp_path / "calibration").glob("tiny-*.json"))
    again = start_server(config)
    try:
        cached = batching_of(again.address)
    finally:
        again.stop()
    assert cached.from_cache and cached.calibration_seconds == 0
    assert (cached.max_batch_tokens, cached.max_batch_size) == (measured.max_batch_tokens, measured.max_batch_size)


def test_an_explicit_value_overrides_the_measurement(tiny_folder):
    config = server_config(encoders=[ModelSpec("tiny", tiny_folder, "encoder")], policy="measured",
                           calibration_seconds=0.5, max_batch_size=3)
    handle = start_server(config)
    try:
        batching = batching_of(handle.address)
        with SemserveClient(handle.address) as c:
            assert c.embed(["one", "two", "three", "four", "five"], model="tiny").vectors.shape == (5, 256)
    finally:
        handle.stop()
    assert batching.policy == "measured" and batching.max_batch_size == 3
    assert batching.max_batch_tokens >= 64  # still measured


def small_cpu_like(batch: int, length: int) -> float:
    """A 2-core CPU as measured with MiniLM: ~13 ms fixed per pass, then ~6k tokens/s."""
    return 0.0125 + batch * length / 6e3


def test_the_per_batch_cost_of_serving_moves_the_budget_to_where_it_is_amortised():
    points = table(small_cpu_like)
    bare = choose(points, MAX_TOKENS, per_batch_s=0.0)
    charged = choose(points, MAX_TOKENS)
    assert charged.max_batch_tokens > bare.max_batch_tokens
    # At the chosen budget a served pass (its time plus one smallest pass) keeps >= 90% of the best.
    extra = small_cpu_like(1, LENGTHS[0])
    budget = charged.max_batch_tokens
    assert budget / (small_cpu_like(1, budget) + extra) >= 0.9 * 6e3 * 0.97
    assert charged.points == points  # what was measured is kept as measured
