"""A request's ``Timing`` message from the core's timing record and the front end's clock."""

from __future__ import annotations

from semserve.core.types import Timing
from semserve_client.v1 import common_pb2


def timing_proto(timing: Timing, total_s: float) -> common_pb2.Timing:
    return common_pb2.Timing(
        queue_time_us=round(timing.queue_s * 1e6),
        tokenization_time_us=round(timing.tokenization_s * 1e6),
        inference_time_us=round(timing.inference_s * 1e6),
        total_time_us=round(total_s * 1e6),
        compute_tokens=timing.compute_tokens,
        padded_tokens=timing.padded_tokens,
        batches=timing.batches,
        transport_time_us=round(timing.transport_s * 1e6),
    )
