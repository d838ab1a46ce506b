"""CUDA graphs of replicas on any GPU of the process, captured while other threads use theirs.

The engine's threads never change the current device, and ``torch.cuda.graph`` on its own
captures on one stream made on whichever device was current first: a replica on a second GPU
failed every capture and served eagerly (docs/benchmarks.md, "Several GPUs"). These need a GPU
(two for the ones named so) and are skipped elsewhere. On a GPU machine without the bundled
model package: ``SEMSERVE_TEST_MINILM_DIR=.models/minilm PYTHONPATH=server:client:tests
python3 -m pytest tests/test_cuda_graph_devices.py``.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model_factory import make_tiny_st_encoder
from semserve.engine.runtime.packing import make_runner
from semserve.models.encoder import load_encoder

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_gpu = pytest.mark.skipif(GPUS < 1, reason="needs a CUDA GPU")
needs_two_gpus = pytest.mark.skipif(GPUS < 2, reason="needs two CUDA GPUs")


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    return make_tiny_st_encoder(tmp_path_factory.mktemp("encoder"), seed=3)


def graphed_runner(folder, device: str, cuda_graphs: bool = True):
    model = load_encoder(folder, device=device, dtype=torch.float16)
    runner = make_runner(model, pad_id=0, cuda_graphs=cuda_graphs, unpadded=True)
    runner.set_batch_limits(1024, 8)
    return runner


def assert_fully_captured(runner) -> None:
    captured, shapes, _ = runner.capture_graphs(60.0)
    assert shapes > 0 and captured == shapes, f"{captured} of {shapes} graphs captured on {runner.device}"


def embed(runner, lengths: list[int]) -> np.ndarray:
    """Rows for texts of these lengths, through the runner's own batch preparation."""
    rng = np.random.default_rng(sum(lengths))
    lengths_array = np.array(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths_array)])
    tokens = SimpleNamespace(ids=rng.integers(5, 90, int(offsets[-1])).astype(np.int64), type_ids=None,
                             offsets=offsets)
    request = SimpleNamespace(lengths=lengths_array, tokens=tokens)
    return runner.run(runner.prepare([(request, np.arange(len(lengths)))]))


@needs_two_gpus
def test_a_replica_on_the_second_gpu_is_graphed_and_replays_what_eager_computes(encoder_folder):
    assert torch.cuda.current_device() == 0
    graphed = graphed_runner(encoder_folder, "cuda:1")
    assert_fully_captured(graphed)
    eager = graphed_runner(encoder_folder, "cuda:1", cuda_graphs=False)
    lengths = [3, 17, 9, 30]
    np.testing.assert_allclose(embed(graphed, lengths), embed(eager, lengths), atol=2e-3)


@needs_two_gpus
def test_replicas_on_two_gpus_capture_from_threads_of_their_own_at_once(encoder_folder):
    runners = [graphed_runner(encoder_folder, f"cuda:{i}") for i in range(2)]
    errors: list[BaseException] = []

    def capture(runner) -> None:
        try:
            assert_fully_captured(runner)
        except BaseException as error:  # noqa: BLE001 - reported below, with the device
            errors.append(error)

    threads = [threading.Thread(target=capture, args=(r,)) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors


@needs_gpu
def test_another_threads_work_on_the_device_never_fails_while_a_replica_captures(encoder_folder):
    """What a replica's thread does while another model's replica on its GPU captures (a model
    loaded while others serve): forward passes, each waiting for its own output, and fresh
    memory. Under the process-wide capture mode these failed, so calls of a model that was
    serving failed. The capture itself may still be voided by that work; its replica then
    serves eagerly, and must serve right. (A wait for the whole device would still fail: the
    engine has none while serving.)"""
    runner = graphed_runner(encoder_folder, "cuda:0")
    other = graphed_runner(encoder_folder, "cuda:0", cuda_graphs=False)
    stop, errors, turns = threading.Event(), [], []

    def serve_eagerly() -> None:
        try:
            while not stop.is_set():
                embed(other, [5, 11])
                torch.empty(1 << 20, device="cuda:0")
                turns.append(1)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    worker = threading.Thread(target=serve_eagerly)
    worker.start()
    try:
        runner.capture_graphs(60.0)
    finally:
        stop.set()
        worker.join(60)
    assert not errors, errors
    assert turns
    np.testing.assert_allclose(embed(runner, [4, 20]), embed(other, [4, 20]), atol=2e-3)
