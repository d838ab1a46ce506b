"""The path every model call takes: tokenize off the loop, check lengths, queue on the
model's batcher, await the items, and account for time. Shared by encode, rerank and search."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Sequence

from semserve.registry import HostedModel
from semserve.runtime.tokenization import Encoded, TextInput
from semserve.service.errors import invalid_argument
from semserve.service.timing import TimingParts

# How many offending indexes an error message lists before summarising.
_LISTED = 5
# Requests up to this many characters are tokenized on the event loop (tens of microseconds).
INLINE_TOKENIZE_CHARS = 1024


def _chars(inputs: Sequence[TextInput]) -> int:
    return sum(len(x) if isinstance(x, str) else len(x[0]) + len(x[1]) for x in inputs)


@dataclass
class InferenceOutcome:
    values: list[Any]
    encoded: list[Encoded]
    timing: TimingParts


def deadline_of(context) -> float | None:
    """The call's deadline on the monotonic clock, or None when the client set none."""
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None else time.monotonic() + remaining


async def run_inference(
    model: HostedModel,
    inputs: Sequence[TextInput],
    truncate: bool,
    deadline: float | None,
    tokenize_pool: Executor,
    what: str = "text",
) -> InferenceOutcome:
    with model.in_use():
        return await _run(model, inputs, truncate, deadline, tokenize_pool, what)


async def _run(model, inputs, truncate, deadline, tokenize_pool, what) -> InferenceOutcome:
    started = time.monotonic()
    if _chars(inputs) <= INLINE_TOKENIZE_CHARS:
        # A thread hop costs more than tokenizing a few short texts on the loop itself.
        encoded = model.tokenizer.encode(inputs, truncate)
    else:
        encoded = await asyncio.get_running_loop().run_in_executor(
            tokenize_pool, model.tokenizer.encode, inputs, truncate
        )
    timing = TimingParts(tokenization_s=time.monotonic() - started)
    if not truncate:
        over = [i for i, e in enumerate(encoded) if e.length > model.max_tokens]
        if over:
            listed = ", ".join(f"{what} {i} has {encoded[i].length} tokens" for i in over[:_LISTED])
            more = f" and {len(over) - _LISTED} more" if len(over) > _LISTED else ""
            raise invalid_argument(
                f"{listed}{more}, over model {model.name!r}'s max_tokens {model.max_tokens}; "
                "shorten it or send truncate=true"
            )
    future = model.batcher.submit([(e, e.length) for e in encoded], deadline)
    try:
        group = await future
    finally:
        if not future.done():  # the call was cancelled: its queued items are dropped
            future.cancel()
    timing.compute_tokens = sum(e.length for e in encoded)
    timing.add_group(group)
    return InferenceOutcome(values=group.values, encoded=encoded, timing=timing)
