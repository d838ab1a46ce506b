"""A server in one process: the engine and one gRPC front end on the same event loop.

This is ``semserve serve --frontends 0`` and what tests and notebooks embed. The front end
talks to the engine through the same core API that crosses processes in the multi-process
server (process/supervisor.py), so both modes run the same code apart from the transport.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass

from semserve.config import ServerConfig
from semserve.endpoints import bind_metrics, metrics_description, warn_if_exposed
from semserve.engine.engine import Engine
from semserve.frontend.server import FrontEnd

log = logging.getLogger("semserve")


class SemserveServer:
    """One server: call ``start()`` on the loop that will serve, then ``stop()``."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.engine = Engine(config)
        self.frontend = FrontEnd(self.engine, config)

    @property
    def port(self) -> int | None:
        return self.frontend.port

    def load_models(self) -> None:
        self.engine.load_models()

    async def start(self) -> int:
        await self.engine.start()
        return await self.frontend.start()

    async def stop(self, grace_s: float | None = None) -> None:
        """Front end first (calls in flight finish), then the engine (store closed cleanly)."""
        await self.frontend.stop(self.config.grace_period_s if grace_s is None else grace_s)
        await self.engine.stop()

    def describe(self) -> str:
        return f"semserve listening on {self.config.host}:{self.port}; {self.engine.summary()}"


def register_metrics(config: ServerConfig, engine: Engine) -> None:
    """Counters in the engine's process: it holds the model counters and those every front end reports."""
    if config.metrics_port:
        from prometheus_client import REGISTRY

        from semserve.engine.stats import EngineStateCollector, FrontendCollector

        REGISTRY.register(FrontendCollector(engine))
        REGISTRY.register(EngineStateCollector(engine))


async def serve_until_signalled(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    bind_metrics(config)
    warn_if_exposed(config)
    server = SemserveServer(config)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, server.load_models)
    register_metrics(config, server.engine)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    loop.add_signal_handler(signal.SIGHUP, server.frontend.reload_credentials)
    log.info(server.describe() + metrics_description(config))
    await stop.wait()
    log.info("stopping: health NOT_SERVING, refusing new calls, %.0fs grace for calls in flight", config.grace_period_s)
    await server.stop()
    log.info("stopped")


@dataclass
class BackgroundServer:
    """A server running on its own event loop thread (tests, notebooks, embedding)."""

    server: SemserveServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.server.config.host in ("0.0.0.0", "::", "") else self.server.config.host
        return f"{host}:{self.server.port}"

    def run(self, coro):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self, grace_s: float = 5.0) -> None:
        self.run(self.server.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def start_in_background(config: ServerConfig) -> BackgroundServer:
    server = SemserveServer(config)
    server.load_models()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="semserve-loop", daemon=True)
    thread.start()
    handle = BackgroundServer(server=server, loop=loop, thread=thread)
    handle.run(server.start())
    return handle
