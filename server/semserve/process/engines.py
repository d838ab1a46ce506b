"""How many engine processes a server runs, and each one's configuration (``--engines``).

"one": a single engine drives every device named, with a worker per device. "per-device": an
engine process per device, so each device's batcher, batch preparation and replies have a
process and a GIL of their own; the front ends spread model calls over them
(ipc/group.py). "auto", the default: an engine per device where two or more distinct GPUs
are named, else one. On two H200s an engine per GPU served 3% (BERT-base) to 48%
(cross-encoder) more than one engine driving both did (docs/benchmarks.md, "Several GPUs").
The first engine holds the collection store, whose shards may still sit on every device, and
is the store's only writer; engine i serves its /metrics on the metrics port + i. Known
without importing torch, as the supervisor decides before any engine starts.
"""

from __future__ import annotations

import dataclasses

from semserve.config import ServerConfig
from semserve.process.devices import gpu_count


def device_list(device_spec: str) -> list[str]:
    """The devices a spec names: an explicit list as written; ``auto`` and ``cuda`` as every GPU
    the driver shows (none: the CPU)."""
    spec = (device_spec or "auto").strip().lower()
    if spec in ("auto", "cuda"):
        return [f"cuda:{i}" for i in range(gpu_count(spec))] or ["cpu"]
    return [part.strip() for part in spec.split(",") if part.strip()]


def engine_per_device(config: ServerConfig) -> bool:
    """Whether the server runs an engine process per device: asked for, or ``auto`` with two or
    more distinct GPUs (the same GPU named twice is one GPU's replicas, kept in one engine)."""
    if config.engines == "per-device":
        return len(device_list(config.device)) > 1
    return config.engines == "auto" and gpu_count(config.device) > 1


def engine_configs(config: ServerConfig) -> list[ServerConfig]:
    """One configuration per engine process, the first holding the collections."""
    devices = device_list(config.device)
    if not engine_per_device(config):
        return [config]
    search = config.search
    if search.devices == "auto":  # the collections' shards stay on every device, held by engine 0
        search = dataclasses.replace(search, devices=",".join(devices))
    return [
        dataclasses.replace(
            config, device=device, holds_collections=index == 0,
            metrics_port=config.metrics_port + index if config.metrics_port else 0,
            search=search if index == 0 else config.search,
        )
        for index, device in enumerate(devices)
    ]
