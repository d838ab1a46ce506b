"""``EngineGroup``: the core API of several engine processes (``--engines per-device``), for a
front end.

One engine per device gives each device's host work (its batcher, the preparation and launch
of its batches, its replies) a process and a GIL of its own: with one engine driving two GPUs,
MiniLM encoded 0.85x what one GPU did, the engine's loop and both devices' threads sharing one
GIL (docs/benchmarks.md, "Several GPUs"). Model calls go to the engine with the fewest of this
front end's calls in flight; everything else keeps one home:

- collections, searches and writes go to the first engine, the store's only writer;
- a model load or unload goes to every engine, and a load that fails in one is undone in the
  others, so every engine serves the same models;
- ``info`` adds the engines' counters up per model and lists every engine's devices.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from semserve.core.api import CORE_METHODS
from semserve.core.types import EngineInfo, ModelCounters, ModelDescriptor
from semserve.ipc.client import RemoteCore

# Calls every engine answers alike, or that belong to the first engine (the store, the front-end
# counters that /metrics reports, the model table every engine shares).
_FIRST_ENGINE = tuple(m for m in CORE_METHODS if m not in ("encode", "score", "load_model", "unload_model", "info"))


class EngineGroup:
    def __init__(self, addresses: list[str]):
        if len(addresses) < 2:
            raise ValueError("an engine group has at least two engines")
        self.engines = [RemoteCore(address) for address in addresses]
        self._in_flight = [0] * len(addresses)
        self._turn = 0

    @property
    def models_epoch(self) -> int:
        # Epochs only grow, so the sum changes whenever any engine's table does.
        return sum(engine.models_epoch for engine in self.engines)

    async def start(self) -> None:
        await asyncio.gather(*(engine.start() for engine in self.engines))

    async def close(self) -> None:
        await asyncio.gather(*(engine.close() for engine in self.engines))

    # -- model calls: the least busy engine ------------------------------------------------

    def _pick(self) -> int:
        """The engine with the fewest of this front end's calls in flight; ties go round."""
        count = len(self.engines)
        start = self._turn
        self._turn = (start + 1) % count
        return min(((start + i) % count for i in range(count)), key=self._in_flight.__getitem__)

    async def _spread(self, method: str, *args: Any) -> Any:
        index = self._pick()
        self._in_flight[index] += 1
        try:
            return await getattr(self.engines[index], method)(*args)
        finally:
            self._in_flight[index] -= 1

    async def encode(self, model, tokens, deadline):
        return await self._spread("encode", model, tokens, deadline)

    async def score(self, model, tokens, raw, deadline):
        return await self._spread("score", model, tokens, raw, deadline)

    # -- model lifecycle: every engine -----------------------------------------------------

    async def load_model(self, name: str, kind: str, path: str) -> ModelDescriptor:
        results = await asyncio.gather(*(e.load_model(name, kind, path) for e in self.engines), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            loaded = [e for e, r in zip(self.engines, results) if not isinstance(r, BaseException)]
            await asyncio.gather(*(e.unload_model(name) for e in loaded), return_exceptions=True)
            raise failed[0]
        return dataclasses.replace(results[0], devices=[d for r in results for d in r.devices])

    async def unload_model(self, name: str) -> None:
        results = await asyncio.gather(*(e.unload_model(name) for e in self.engines), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]

    # -- info: every engine, added up ------------------------------------------------------

    async def info(self) -> EngineInfo:
        infos = await asyncio.gather(*(engine.info() for engine in self.engines))
        first = infos[0]
        by_name = {m.name: [m] for m in first.models}
        for other in infos[1:]:
            for model in other.models:
                by_name.setdefault(model.name, []).append(model)
        return EngineInfo([merged(copies) for copies in by_name.values()], first.frontends)


def merged(copies: list[ModelDescriptor]) -> ModelDescriptor:
    """One model as served by several engines: every engine's devices, counters added up, the
    measured throughput of all devices together."""
    first = copies[0]
    counters = None
    if any(c.counters is not None for c in copies):
        fields = [f.name for f in dataclasses.fields(ModelCounters)]
        counters = ModelCounters(**{f: sum(getattr(c.counters, f) for c in copies if c.counters) for f in fields})
    batching = first.batching
    if batching is not None:
        batching = dataclasses.replace(batching, tokens_per_s=sum(c.batching.tokens_per_s for c in copies if c.batching))
    return dataclasses.replace(first, devices=[d for c in copies for d in c.devices], counters=counters,
                               batching=batching)


def _first_engine(method: str):
    async def forward(self: EngineGroup, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self.engines[0], method)(*args, **kwargs)

    forward.__name__ = method
    forward.__doc__ = f"The first engine's ``{method}``."
    return forward


for _method in _FIRST_ENGINE:
    setattr(EngineGroup, _method, _first_engine(_method))
