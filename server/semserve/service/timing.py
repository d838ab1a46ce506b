"""Where a request's time went, gathered from the batches its items took part in."""

from __future__ import annotations

from dataclasses import dataclass
from semserve.batching import RequestGroup
from semserve_client.v1 import common_pb2


@dataclass
class TimingParts:
    queue_s: float = 0.0
    tokenization_s: float = 0.0
    inference_s: float = 0.0
    compute_tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0

    def add_group(self, group: RequestGroup) -> None:
        self.queue_s = max(self.queue_s, group.queue_time_s)
        for batch in group.batches.values():
            self.inference_s += batch.inference_time_s
            self.padded_tokens += batch.padded_tokens
        self.batches += len(group.batches)

    def merge(self, other: "TimingParts") -> None:
        self.queue_s = max(self.queue_s, other.queue_s)
        self.tokenization_s += other.tokenization_s
        self.inference_s += other.inference_s
        self.compute_tokens += other.compute_tokens
        self.padded_tokens += other.padded_tokens
        self.batches += other.batches

    def to_proto(self, total_s: float) -> common_pb2.Timing:
        return common_pb2.Timing(
            queue_time_us=round(self.queue_s * 1e6),
            tokenization_time_us=round(self.tokenization_s * 1e6),
            inference_time_us=round(self.inference_s * 1e6),
            total_time_us=round(total_s * 1e6),
            compute_tokens=self.compute_tokens,
            padded_tokens=self.padded_tokens,
            batches=self.batches,
        )
