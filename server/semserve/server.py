"""Assembling and running the server: models, batchers, gRPC services, health, reflection,
and a graceful stop (health NOT_SERVING, new calls refused, calls in flight finish)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from semserve.config import ServerConfig
from semserve.registry import ModelRegistry, load_model
from semserve.runtime.devices import resolve_devices
from semserve.service.encoder_service import EncoderServicer
from semserve.service.info_service import InfoServicer
from semserve.service.admin_service import AdminServicer
from semserve.service.reranker_service import RerankerServicer
from semserve.service.search_service import SearchServicer
from semserve.search.store import CollectionStore
from semserve_client.v1 import encoder_pb2, encoder_pb2_grpc, info_pb2, info_pb2_grpc, reranker_pb2
from semserve_client.v1 import reranker_pb2_grpc, search_pb2, search_pb2_grpc

log = logging.getLogger("semserve")

SERVICE_NAMES = {
    "encoder": encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name,
    "reranker": reranker_pb2.DESCRIPTOR.services_by_name["RerankerService"].full_name,
    "search": search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
    "info": info_pb2.DESCRIPTOR.services_by_name["InfoService"].full_name,
    "admin": info_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
}


class SemserveServer:
    """One server: call ``start()`` on the loop that will serve, then ``stop()``."""

    def __init__(self, config: ServerConfig):
        config.validate()
        self.config = config
        self.registry = ModelRegistry()
        self.devices = resolve_devices(config.device)
        self.tokenize_pool = ThreadPoolExecutor(config.tokenizer_threads, thread_name_prefix="tokenize")
        self.health = health.aio.HealthServicer()
        self.store = CollectionStore(config.search, self.devices)
        self.search: SearchServicer | None = None
        self.port: int | None = None
        self._grpc: grpc.aio.Server | None = None

    def load_models(self) -> None:
        """Load every configured model (blocking; before serving)."""
        for spec in (*self.config.encoders, *self.config.rerankers):
            self.registry.add(
                load_model(spec, self.devices, self.config.dtype, self.config.batching, self.config.cuda_graphs)
            )

    async def start(self) -> int:
        if not len(self.registry):
            await asyncio.get_running_loop().run_in_executor(None, self.load_models)
        for model in self.registry:
            model.batcher.start()
        limits = self.config.limits
        # Collections are recovered (snapshot + log replay) before the port opens.
        await asyncio.get_running_loop().run_in_executor(None, self.store.open)
        self.search = SearchServicer(
            self.store, self.registry, limits,
            EncoderServicer(self.registry, limits, self.tokenize_pool),
            RerankerServicer(self.registry, limits, self.tokenize_pool),
        )
        self.search.start_maintenance()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
                ("grpc.max_send_message_length", limits.max_send_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(
            EncoderServicer(self.registry, limits, self.tokenize_pool), server
        )
        reranker_pb2_grpc.add_RerankerServiceServicer_to_server(
            RerankerServicer(self.registry, limits, self.tokenize_pool), server
        )
        search_pb2_grpc.add_SearchServiceServicer_to_server(self.search, server)
        info_pb2_grpc.add_InfoServiceServicer_to_server(InfoServicer(self.registry, self.config), server)
        info_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.registry, self.config, self.devices, self.config.admin_token), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*SERVICE_NAMES.values(), health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        address = f"{self.config.host}:{self.config.port}"
        self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"could not bind {address}")
        await server.start()
        self._grpc = server
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICE_NAMES.values():
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let calls in flight finish within the grace period."""
        grace = self.config.grace_period_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self.search is not None:  # snapshot and close the logs once no call can write
            await self.search.stop()
        await self.registry.stop_all()
        self.tokenize_pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> str:
        models = ", ".join(f"{m.name} ({m.kind}, dim {m.dimension}, max_tokens {m.max_tokens})" for m in self.registry)
        return f"semserve listening on {self.config.host}:{self.port}; models: {models}; devices: {', '.join(self.devices)}"


async def serve_until_signalled(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    server = SemserveServer(config)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, server.load_models)
    if config.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info(server.describe() + (f"; metrics on :{config.metrics_port}/metrics" if config.metrics_port else ""))
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
