"""The engine process: loads the models, recovers the collections, serves the core API over IPC.

It is the only process that imports torch, holds GPU memory and writes the store. On SIGTERM
(sent by the supervisor once every front end has drained) it closes the store cleanly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from semserve.config import ConfigError
from semserve.engine.engine import Engine
from semserve.ipc.endpoint import EngineEndpoint
from semserve.models.errors import ModelLoadError
from semserve.process.children import (
    GIL_SWITCH_INTERVAL_S,
    child_arguments,
    exit_now,
    read_config,
    report,
    setup_logging,
    stop_requested,
)
from semserve.endpoints import bind_metrics
from semserve.server import register_metrics

log = logging.getLogger("semserve")

async def run(config, address: str, ready_fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # credentials live in the front ends
    loop = asyncio.get_running_loop()
    try:
        bind_metrics(config)
        engine = Engine(config)
        await loop.run_in_executor(None, engine.load_models)
        register_metrics(config, engine)
        await engine.start()
    except (ConfigError, ModelLoadError, OSError) as exc:
        report(ready_fd, f"failed {exc}")
        return 2
    endpoint = EngineEndpoint(engine, address)
    await endpoint.start()
    report(ready_fd, "ready " + json.dumps({"models": engine.models_summary(), "devices": engine.devices}))
    await stop_requested()
    log.info("engine stopping: closing the store and the batchers")
    await endpoint.stop()
    await engine.stop()
    log.info("engine stopped")
    return 0


def main() -> int:
    args = child_arguments("semserve engine process").parse_args()
    config = read_config(args.config)
    setup_logging(config, "engine")
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    exit_now(asyncio.run(run(config, args.address, args.ready_fd)))


if __name__ == "__main__":
    sys.exit(main())
