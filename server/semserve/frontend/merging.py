"""A front end's concurrent model calls travel to the engine together.

Every engine call costs the engine's event loop the same Python work (receive, unpickle, one
task, one queued request, the reply) however few texts it holds; under single-text load that
work, not the GPU, set the ceiling (docs/benchmarks.md, "Where the engine's GIL goes"). So the
calls of one model and kind (a lane) leave as one engine call, up to one batch's worth, and each
caller gets its own rows back:

- calls the event loop reaches in one turn go together at the end of that turn (a stream's
  messages often arrive so);
- while the lane already has ``in_flight`` engine calls out, new calls wait for one of them to
  come back, but never longer than ``max_wait_s`` (the batcher's ``max_queue_delay``), nor once
  a batch's worth waits.

Only small calls (at most ``MERGED_MAX_INPUTS`` inputs) merge: for them the per-call work is
most of the cost. Merging 32-text calls did not raise their throughput on an H100 (7% lower in
four alternated runs, docs/benchmarks.md), so larger calls go on their own.

A lone call therefore goes at once, and no call waits here past ``max_queue_delay``: the engine
still sees the queue and admits or refuses each (merged) call with its bounds and
``max_queue_time_ms``. (Waiting for a free slot without that bound merged more, but moved the
queue out of the engine's sight: an overloaded server then queued calls instead of refusing
them.) A merged call is admitted or refused as a whole.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Hashable, TypeVar

import numpy as np

from semserve.core.errors import CoreError, DeadlineExpired
from semserve.core.types import EncodeResult, ScoreResult, TokenBatch

# Calls with more inputs than this go to the engine on their own.
MERGED_MAX_INPUTS = 8

Result = TypeVar("Result", EncodeResult, ScoreResult)
EngineCall = Callable[[TokenBatch, "float | None"], Awaitable[Result]]


@dataclass(slots=True)
class _Waiting:
    batch: TokenBatch
    deadline: float | None
    future: asyncio.Future
    since: float
    # Once sent: the engine call, and every caller it carries.
    call: asyncio.Task | None = None
    group: list[_Waiting] | None = None


@dataclass(slots=True)
class _Lane:
    """The calls of one model and kind: how many are at the engine, and who waits to go."""

    model: str
    run: EngineCall
    max_items: int
    max_tokens: int
    in_flight: int = 0
    waiting: list[_Waiting] = field(default_factory=list)
    waiting_items: int = 0
    waiting_tokens: int = 0
    # A dispatch at the end of this turn is scheduled / the held calls' latest departure.
    scheduled: bool = False
    timer: asyncio.TimerHandle | None = None


def concatenate(batches: list[TokenBatch]) -> TokenBatch:
    """Several requests' token batches as one, inputs in order."""
    ids = np.concatenate([b.ids for b in batches])
    starts = np.cumsum([0] + [b.total_tokens for b in batches[:-1]])
    offsets = np.concatenate([np.zeros(1, dtype=np.int64)]
                             + [b.offsets[1:] + start for b, start in zip(batches, starts)])
    type_ids = None
    if batches[0].type_ids is not None:
        type_ids = np.concatenate([b.type_ids for b in batches])
    return TokenBatch(ids, offsets, type_ids)


def rows_of(result: Result, start: int, stop: int, timing) -> Result:
    if isinstance(result, EncodeResult):
        return EncodeResult(result.vectors[start:stop], timing)
    return ScoreResult(result.scores[start:stop], timing)


def _own_error(exc: BaseException) -> BaseException:
    """A copy per caller, so that several tasks do not raise (and extend) one exception object."""
    return CoreError.from_wire(*exc.to_wire()) if isinstance(exc, CoreError) else exc


class CallMerger:
    """``call`` runs a model call on the engine, merged with the others of its lane."""

    def __init__(self, enabled: bool = True, in_flight: int = 2, max_wait_s: float = 0.002):
        self.enabled = enabled
        self.in_flight = in_flight
        self.max_wait_s = max_wait_s
        self._lanes: dict[tuple, _Lane] = {}
        self._groups: set[asyncio.Task] = set()
        # Per model: engine calls that carried more than one front-end call, and the calls
        # they carried (reported as metrics).
        self.merged: dict[str, list[int]] = {}

    @property
    def merged_engine_calls(self) -> int:
        return sum(engine_calls for engine_calls, _ in self.merged.values())

    @property
    def merged_calls(self) -> int:
        return sum(calls for _, calls in self.merged.values())

    async def call(self, model: str, kind: Hashable, batch: TokenBatch, deadline: float | None, run: EngineCall,
                   max_items: int, max_tokens: int) -> Result:
        """``run(batch, deadline)`` on the engine for this call or for a group it joins: calls
        merge only with calls of the same model and ``kind`` (e.g. embed, or score raw)."""
        if not self.enabled or len(batch) > MERGED_MAX_INPUTS:
            return await run(batch, deadline)
        lane = self._lanes.get((model, kind))
        if lane is None:
            lane = self._lanes[(model, kind)] = _Lane(model, run, max_items, max_tokens)
        lane.run, lane.max_items, lane.max_tokens = run, max_items, max_tokens
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        waiting = _Waiting(batch, deadline, future, time.monotonic())
        lane.waiting.append(waiting)
        lane.waiting_items += len(batch)
        lane.waiting_tokens += batch.total_tokens
        if lane.waiting_items >= max_items or lane.waiting_tokens >= max_tokens:
            self._schedule(lane, loop)  # a batch's worth waits: no reason to hold it
        elif lane.in_flight < self.in_flight:
            # After the callbacks this turn already holds, which may be more calls of the lane.
            self._schedule(lane, loop)
        elif lane.timer is None and not lane.scheduled:
            lane.timer = loop.call_later(self.max_wait_s, self._dispatch, lane)
        try:
            return await future
        except asyncio.CancelledError:
            # The caller went away: it is skipped if it has not left yet, and when every caller
            # of a group that left has gone, the group's engine call is cancelled too.
            call = waiting.call
            if call is not None and not call.done() and all(w.future.done() for w in waiting.group):
                call.cancel()
            raise

    def _schedule(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        if not lane.scheduled:
            lane.scheduled = True
            loop.call_soon(self._dispatch, lane)

    def _dispatch(self, lane: _Lane) -> None:
        """Send everything waiting, in arrival order, in groups of at most one batch."""
        lane.scheduled = False
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        waiting, lane.waiting = lane.waiting, []
        lane.waiting_items = lane.waiting_tokens = 0
        group: list[_Waiting] = []
        items = tokens = 0
        for w in waiting:
            if w.future.done():
                continue
            n, t = len(w.batch), w.batch.total_tokens
            if group and (items + n > lane.max_items or tokens + t > lane.max_tokens):
                self._start(lane, group)
                group, items, tokens = [], 0, 0
            group.append(w)
            items, tokens = items + n, tokens + t
        if group:
            self._start(lane, group)

    def _start(self, lane: _Lane, group: list[_Waiting]) -> None:
        """One engine call for ``group``, as a task whose completion hands each caller its rows
        (a callback, not a second task: one loop turn less per call)."""
        now = time.monotonic()
        live = []
        for w in group:
            if w.deadline is not None and w.deadline <= now:
                w.future.set_exception(
                    DeadlineExpired("deadline passed while the request was queued; nothing was computed"))
            else:
                live.append(w)
        if not live:
            return
        if len(live) > 1:
            counts = self.merged.setdefault(lane.model, [0, 0])
            counts[0] += 1
            counts[1] += len(live)
        deadlines = [w.deadline for w in live]
        deadline = None if None in deadlines else max(deadlines)
        batch = live[0].batch if len(live) == 1 else concatenate([w.batch for w in live])
        lane.in_flight += 1
        call = asyncio.get_running_loop().create_task(lane.run(batch, deadline))
        self._groups.add(call)
        for w in live:
            w.call, w.group = call, live
        call.add_done_callback(lambda done: self._deliver(lane, live, now, done))

    def _deliver(self, lane: _Lane, live: list[_Waiting], sent: float, call: asyncio.Task) -> None:
        self._groups.discard(call)
        lane.in_flight -= 1
        if lane.waiting and lane.in_flight < self.in_flight:
            self._schedule(lane, asyncio.get_running_loop())
        if call.cancelled():
            for w in live:
                w.future.cancel()
            return
        exc = call.exception()
        if exc is not None:
            for w in live:
                if not w.future.done():
                    w.future.set_exception(_own_error(exc))
            return
        result = call.result()
        if len(live) == 1:
            if not live[0].future.done():
                result.timing.queue_s += sent - live[0].since
                live[0].future.set_result(result)
            return
        start = 0
        for w in live:
            stop = start + len(w.batch)
            if not w.future.done():
                # The time held here counts as queueing.
                timing = replace(result.timing, queue_s=result.timing.queue_s + (sent - w.since),
                                 compute_tokens=w.batch.total_tokens)
                w.future.set_result(rows_of(result, start, stop, timing))
            start = stop
