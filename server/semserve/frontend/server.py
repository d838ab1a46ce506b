"""One gRPC server over a core: the services, health, reflection, and a graceful stop.

The same assembly serves a single-process server (the core is the engine itself) and each
front-end process of ``semserve serve --frontends N`` (the core is a ``RemoteCore``); with
``reuse_port`` several processes bind one port and the kernel spreads connections over them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from semserve.config import ServerConfig
from semserve.core.api import Core
from semserve.core.types import FrontendCounters
from semserve.frontend.admin_service import AdminServicer
from semserve.frontend.auth import ApiKeys, Authorizer
from semserve.frontend.call_metrics import CallMetrics
from semserve.frontend.encoder_service import EncoderServicer
from semserve.frontend.handlers import ServiceHandlers
from semserve.frontend.inference import Inference
from semserve.frontend.info_service import InfoServicer
from semserve.frontend.merging import CallMerger
from semserve.frontend.models import ModelDirectory
from semserve.frontend.reranker_service import RerankerServicer
from semserve.frontend.search_service import SearchServicer
from semserve.frontend.tls import CertificateFiles, server_credentials
from semserve.frontend.tracing import setup_tracing
from semserve_client.v1 import encoder_pb2, encoder_pb2_grpc, info_pb2, info_pb2_grpc, reranker_pb2
from semserve_client.v1 import reranker_pb2_grpc, search_pb2, search_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = {
    "encoder": encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name,
    "reranker": reranker_pb2.DESCRIPTOR.services_by_name["RerankerService"].full_name,
    "search": search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
    "info": info_pb2.DESCRIPTOR.services_by_name["InfoService"].full_name,
    "admin": info_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
}
# How often a front end tells the engine its counters (GetInfo shows every front end's).
REPORT_INTERVAL_S = 0.5


class FrontEnd:
    def __init__(self, core: Core, config: ServerConfig, index: int = 0, reuse_port: bool = False):
        self.core = core
        self.config = config
        self.index = index
        self.reuse_port = reuse_port
        self.models = ModelDirectory(core)
        self.tokenize_pool = ThreadPoolExecutor(config.tokenizer_threads, thread_name_prefix="tokenize")
        self.metrics = CallMetrics()
        self.tracing = setup_tracing(config.tracing, f"frontend-{index}")
        merger = CallMerger(config.merge_engine_calls, max_wait_s=config.batching.max_queue_delay_us / 1e6)
        self.inference = Inference(core, self.models, self.tokenize_pool, self.metrics, self.tracing, merger)
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.keys = ApiKeys(config.security)
        self.authorizer = Authorizer(self.keys)
        self.certificates: CertificateFiles | None = None
        self._grpc: grpc.aio.Server | None = None
        self._reporter: asyncio.Task | None = None

    async def start(self) -> int:
        """Learn the models from the core, bind the port, and report SERVING."""
        await self.models.refresh()
        limits = self.config.limits
        security = self.config.security
        # Every service registers into one handler (frontend/handlers.py: no interceptors, no
        # methods registered by name, which cost gRPC-Python per call).
        handlers = ServiceHandlers(self.metrics, self.tracing, self.authorizer)
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(EncoderServicer(self.inference, limits), handlers)
        reranker_pb2_grpc.add_RerankerServiceServicer_to_server(RerankerServicer(self.inference, limits), handlers)
        search_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(self.inference, limits), handlers)
        info_pb2_grpc.add_InfoServiceServicer_to_server(InfoServicer(self.core, self.config, self.authorizer), handlers)
        info_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.core, self.models, security.model_root),
                                                          handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, handlers)
        if security.reflection:
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(
                [*SERVICE_NAMES.values(), health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME]), handlers)
        server = grpc.aio.server(
            handlers=[handlers],
            options=[
                ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
                ("grpc.max_send_message_length", limits.max_send_message_bytes),
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ],
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        address = f"{self.config.host}:{self.config.port}"
        tls = server_credentials(security)
        if tls is None:
            self.port = server.add_insecure_port(address)
        else:
            credentials, self.certificates = tls
            self.port = server.add_secure_port(address, credentials)
        if not self.port:
            raise OSError(f"could not bind {address}")
        await server.start()
        self._grpc = server
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICE_NAMES.values():
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self._report()
        self._reporter = asyncio.get_running_loop().create_task(self._report_forever())
        return self.port

    def reload_credentials(self) -> None:
        """SIGHUP: re-read the API keys now and the certificate at the next handshake."""
        self.keys.reload(force=True)
        if self.certificates is not None:
            self.certificates.request_reload()

    async def stop(self, grace_s: float) -> None:
        """Health NOT_SERVING, refuse new calls, let calls in flight finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        if self._grpc is not None:
            await self._grpc.stop(grace_s)
        if self._reporter is not None:
            self._reporter.cancel()
        self.tokenize_pool.shutdown(wait=False, cancel_futures=True)

    async def _report(self) -> None:
        snapshot = self.metrics.snapshot()
        snapshot["merged"] = {model: tuple(counts) for model, counts in self.inference.merger.merged.items()}
        await self.core.report_frontend(FrontendCounters(self.index, os.getpid(), self.metrics.calls, snapshot))

    async def _report_forever(self) -> None:
        last = -1
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            if self.metrics.calls != last:
                last = self.metrics.calls
                try:
                    await self._report()
                except Exception:  # counters are best effort; serving goes on
                    log.debug("could not report counters to the engine", exc_info=True)
