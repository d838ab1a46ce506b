"""AdminService: load a further model folder by name at run time, or unload one.

Off unless the server has an admin token (``--admin-token``): loading reads arbitrary folders
on the server's filesystem, so it must never be open by default. Calls carry the token as
``authorization: Bearer <token>`` metadata.

Unloading loses no request: the name disappears at once (new calls get NOT_FOUND), requests
already using the model finish, and only then is its batcher stopped and its memory freed.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging

import grpc

from semserve.config import ModelSpec, ServerConfig
from semserve.models.errors import ModelLoadError
from semserve.registry import CROSS_ENCODER, ENCODER, ModelRegistry, load_model
from semserve.service.errors import ServiceError, invalid_argument, unary_rpc
from semserve.service.info_service import model_info
from semserve_client.v1 import common_pb2, info_pb2, info_pb2_grpc

log = logging.getLogger(__name__)

_KINDS = {common_pb2.MODEL_KIND_ENCODER: ENCODER, common_pb2.MODEL_KIND_CROSS_ENCODER: CROSS_ENCODER}


class AdminServicer(info_pb2_grpc.AdminServiceServicer):
    def __init__(self, registry: ModelRegistry, config: ServerConfig, devices: list[str], admin_token: str | None):
        self._registry = registry
        self._config = config
        self._devices = devices
        self._token = admin_token

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if not self._token:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "model management is disabled on this server; start it with --admin-token to enable it",
            )
        metadata = dict(context.invocation_metadata() or ())
        given = metadata.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED, "send the admin token as 'authorization: Bearer <token>' metadata"
            )

    @unary_rpc
    async def LoadModel(self, request, context):
        self._authorize(context)
        if not request.name.strip():
            raise invalid_argument("name is empty; give the name requests will use for this model")
        if request.kind not in _KINDS:
            raise invalid_argument("kind must be MODEL_KIND_ENCODER or MODEL_KIND_CROSS_ENCODER")
        if not request.path:
            raise invalid_argument("path is empty; give a model folder on the server's filesystem")
        try:
            self._registry.reserve(request.name)
        except ValueError as exc:
            raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        try:
            spec = ModelSpec.parse(f"{request.name}={request.path}", _KINDS[request.kind])
            loop = asyncio.get_running_loop()
            try:
                model = await loop.run_in_executor(
                    None, load_model, spec, self._devices, self._config.dtype, self._config.batching,
                    self._config.cuda_graphs,
                )
            except ModelLoadError as exc:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot load {request.path}: {exc}") from None
            model.batcher.start()
            self._registry.add(model)
        finally:
            self._registry.release(request.name)
        log.info("loaded %s (%s) from %s", model.name, model.kind, model.path)
        return info_pb2.LoadModelResponse(model=model_info(model, self._registry.is_default(model)))

    @unary_rpc
    async def UnloadModel(self, request, context):
        self._authorize(context)
        model = self._registry.remove(request.name)
        drained = await model.wait_idle(self._config.grace_period_s)
        if not drained:
            log.warning("unloading %s with %d request(s) still running after %.0fs",
                        model.name, model.active_requests, self._config.grace_period_s)
        await model.batcher.stop()
        model.replicas.clear()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # freeing cached memory is best effort
            pass
        log.info("unloaded %s", model.name)
        return info_pb2.UnloadModelResponse()
